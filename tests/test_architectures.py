"""Every architecture transformers loads: renamed keys, fused MoE experts, LoRA on MoE parameters.

One tiny random-init checkpoint per architecture (`mergekit_swarm.testing.architectures`), three
full experts and three LoRA adapters each (PEFT's default targets, or all-linear; ranks 2/4/2),
`granularity: layer`, a `python` utility (minus the loss of a fixed token sequence, sensitive
to every weight). For each run:

* every expert's utility, measured on the resident model with that expert's one-hot particle,
  equals its utility loaded by `from_pretrained` / `PeftModel.from_pretrained`: particles land
  where transformers and PEFT put the same tensors (full pools: every model tensor bit for bit);
* the written winner loads with the stock class (or PeftModel) and reproduces its recorded utility;
* full pools: stock mergekit reproduces `mergekit_config.yml` bit for bit where it can plan the
  architecture; elsewhere the file says why and `mergekit-swarm apply` reproduces it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml

from mergekit_swarm.commands.apply import apply_recipe
from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ConfigError, ExpertError
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.experts import open_pool
from mergekit_swarm.experts.groups import group_layout
from mergekit_swarm.testing import toy
from mergekit_swarm.testing.architectures import (
    ARCHITECTURES,
    build_base,
    build_full_experts,
    build_lora_experts,
    build_per_expert_lora,
)
from mergekit_swarm.weights.kernels import one_hot
from tests.helpers import assert_same_tensors, resident_of

QUIET = RunOptions(quiet=True)
# Architectures whose checkpoints stock mergekit 0.1.5 plans tensor for tensor. It defines Mixtral and
# Qwen3-MoE by transformers 5's fused parameter names (which no checkpoint stores), GPT-NeoX with
# attention buffers transformers 5 no longer saves, and infers OLMoE from the fused class.
STOCK_MERGEKIT = {"llama", "llama-tied", "mistral", "qwen2", "qwen3", "gemma2", "gemma3-text", "phi3", "gpt2", "olmo2"}
SCORE = """import torch

def score(model, tokenizer):
    ids = torch.tensor([[1, 10, 20, 30, 11, 21, 31, 12, 22, 32, 2]], device=model.device)
    with torch.no_grad():
        return -float(model(input_ids=ids, labels=ids).loss)
"""


def score(model) -> float:
    ids = torch.tensor([[1, 10, 20, 30, 11, 21, 31, 12, 22, 32, 2]])
    with torch.no_grad():
        return -float(model(input_ids=ids, labels=ids).loss)


@pytest.fixture(scope="session")
def matrix(tmp_path_factory):
    """architecture -> folder with base/, full0..2/, lora0..2/ (one character tokenizer for all)."""
    root = tmp_path_factory.mktemp("architectures")
    tokenizer = toy.build_char_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for architecture in ARCHITECTURES:
            base = build_base(architecture, root / architecture / "base", tokenizer)
            build_full_experts(base, root / architecture)
            build_lora_experts(architecture, base, root / architecture)
    return root


def write_recipe(folder, experts, base=None, **evaluation) -> object:
    recipe = {
        "merge_method": "model_swarms",
        "models": [{"model": str(e)} for e in experts],
        "swarm": {"particles": 4, "max_iterations": 2, "patience": 5, "granularity": "layer", "seed": 1},
        "utility": {"type": "python", "function": "score.py:score"},
    }
    if base is not None:
        recipe["base_model"] = str(base)
    if evaluation:
        recipe["evaluation"] = evaluation
    path = folder / "swarm.yml"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "score.py").write_text(SCORE)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def load_full(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def load_adapter(base, folder):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(load_full(base), folder).eval()


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_full_pool_of_every_architecture(matrix, architecture, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = matrix / architecture
    experts = [folder / f"full{k}" for k in range(3)]
    result = run_swarm(load_recipe(write_recipe(tmp_path / "recipe", experts)), tmp_path / "out", QUIET)

    # one-hot particles are the experts as transformers loads them, bit for bit
    loaded = [load_full(e) for e in experts]
    assert result.expert_dev == [score(m) for m in loaded]
    assert len(set(result.expert_dev)) == 3  # the experts differ: the check above has power
    resident = resident_of(experts, "layer", tokenizer=toy.build_char_tokenizer())  # loaded from experts[0]
    layout = resident.layout
    resident.load(one_hot(layout, 3, 2))
    reference = loaded[2].state_dict()
    for name, tensor in resident.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name

    # the winner loads with the stock class and reproduces its utility
    winner = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(winner) is type(loaded[0])
    assert score(winner) == result.winner_dev
    assert max(result.expert_dev) <= result.winner_dev

    # stock mergekit reproduces the recipe where it can plan the architecture; apply does everywhere
    text = (tmp_path / "out" / "mergekit_config.yml").read_text()
    recipe = yaml.safe_load(text)
    if architecture in STOCK_MERGEKIT:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        assert recipe["merge_method"] == "linear", text[:400]
        run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "stock"), options=MergeOptions(quiet=True))
        assert_same_tensors(tmp_path / "out", tmp_path / "stock")
    else:
        assert recipe["merge_method"] == "model_swarms" and "Stock mergekit cannot: " in text, text[:400]
        apply_recipe(tmp_path / "out" / "mergekit_config.yml", tmp_path / "applied", QUIET)
        assert_same_tensors(tmp_path / "out", tmp_path / "applied")


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_lora_pool_of_every_architecture(matrix, architecture, tmp_path):
    folder = matrix / architecture
    base, experts = folder / "base", [folder / f"lora{k}" for k in range(3)]
    result = run_swarm(load_recipe(write_recipe(tmp_path / "recipe", experts, base)), tmp_path / "out", QUIET)

    expected = [score(load_adapter(base, e)) for e in experts]
    assert result.expert_dev == pytest.approx(expected, abs=1e-6)  # rank padding and alpha folding round
    assert min(abs(a - b) for i, a in enumerate(expected) for b in expected[i + 1 :]) > 1e-4  # the check has power

    winner = load_adapter(base, tmp_path / "out")
    assert score(winner) == pytest.approx(result.winner_dev, abs=1e-6)
    recipe = yaml.safe_load((tmp_path / "out" / "mergekit_config.yml").read_text())
    # update space, the default: stock mergekit's linear of the baked experts (base+adapter models)
    assert recipe["merge_method"] == "linear" and all("+" in m["model"] for m in recipe["models"])


def test_per_expert_lora_adapters_load_into_fused_moe_experts(matrix, tmp_path):
    """Adapters trained when Mixtral's experts were modules (transformers 4) are combined in their
    own layout and converted into the fused ParamWrapper slots as PEFT converts them on loading."""
    base = matrix / "mixtral" / "base"
    experts = [build_per_expert_lora(base, tmp_path / f"v4-{k}", rank, seed=k) for k, rank in enumerate((2, 4, 2))]
    result = run_swarm(load_recipe(write_recipe(tmp_path / "recipe", experts, base)), tmp_path / "out", QUIET)

    expected = [score(load_adapter(base, e)) for e in experts]
    assert result.expert_dev == pytest.approx(expected, abs=1e-6)
    assert min(abs(a - b) for i, a in enumerate(expected) for b in expected[i + 1 :]) > 1e-4
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as written:
        names = set(written.keys())
    assert "base_model.model.model.layers.0.block_sparse_moe.experts.3.w2.lora_B.weight" in names  # still in its own layout
    assert score(load_adapter(base, tmp_path / "out")) == pytest.approx(result.winner_dev, abs=1e-6)


def test_lora_on_fused_experts_cannot_share_mixed_batches(matrix, tmp_path):
    folder = matrix / "mixtral"
    recipe = write_recipe(tmp_path / "recipe", [folder / f"lora{k}" for k in range(3)], folder / "base", particles_per_batch=2)
    with pytest.raises(ConfigError, match=r"particles_per_batch: 2 .*model\.layers\.0\.mlp\.\w+.*set it to 1"):
        run_swarm(load_recipe(recipe), tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists()


def test_an_expert_in_another_layout_is_refused_by_name(matrix, tmp_path):
    """An expert stored in the loaded (fused) layout next to experts in the checkpoint layout."""
    from safetensors.torch import save_file

    folder = matrix / "mixtral"
    fused = tmp_path / "fused"
    model = load_full(folder / "full1")
    model.config.save_pretrained(fused)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(fused / "model.safetensors"))
    with pytest.raises(ExpertError) as err:
        open_pool([folder / "full0", fused])
    message = str(err.value)
    assert "'fused'" in message and "'full0'" in message and "block_sparse_moe.experts.0.w1.weight" in message


def test_layer_groups_of_every_naming_scheme(matrix):
    """Every tensor of a transformer block (MoE experts included) is in that block's group; embeddings,
    final norm and head are groups of their own."""
    for architecture in ("mixtral", "gpt-neox", "gpt2", "qwen3-moe"):
        pool = open_pool([matrix / architecture / f"full{k}" for k in range(2)])
        layout = group_layout(pool, "layer")
        blocks = [g for g in layout.names if g.endswith((".0", ".1"))]
        assert len(blocks) == 2, layout.names
        inside = {g: layout.members(i, pool.tensor_names) for i, g in enumerate(layout.names)}
        assert all(len(inside[g]) > 1 for g in blocks)
        loose = [g for g in layout.names if g not in blocks]
        assert all(inside[g] == [g] for g in loose)  # one tensor each
        if architecture == "mixtral":
            assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in inside["model.layers.1"]


# Sliding-window models lay the shared prefix out like any other batch would not be seen the same way
# (the window counts the padding between the shared tokens and the rest): they keep plain left padding.
SLIDING = {"mistral", "gemma2", "gemma3-text"}


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_prompts_sharing_a_beginning_generate_as_when_padded_alone(matrix, architecture, monkeypatch):
    """Generation from a shared-prefix cache (`utilities.shared_prefix`) gives the replies of plain left
    padding, for the model alone and for a PeftModel's mixed-adapter batches, and is used where it can be."""
    from mergekit_swarm.utilities import text
    from mergekit_swarm.utilities.shared_prefix import shares_prefixes

    folder = matrix / architecture
    tokenizer = toy.build_char_tokenizer()
    prompts = [f"question number {q}: {w}" for q, w in enumerate(["ab", "abcde", "c", "dddddddd", "efg"])]
    settings = text.GenerationSettings(max_new_tokens=6, batch_size=3)
    model = load_adapter(folder / "base", folder / "lora0")
    mixed = architecture not in {"qwen3-moe", "mixtral", "olmoe"}  # PEFT cannot batch LoRA on fused MoE parameters
    if mixed:
        model.load_adapter(str(folder / "lora1"), adapter_name="other")
    adapters = ["default", "other"] if mixed else list(text.NO_ADAPTERS)
    shared = text.generate_for_adapters(model, tokenizer, prompts, settings, adapters)

    assert shares_prefixes(model) == (architecture not in SLIDING)
    assert text._encode_prompts(tokenizer, tuple(prompts), False, True).shared == 1 + len("question number ")  # BOS too
    monkeypatch.setattr(text, "shares_prefixes", lambda model: False)
    text._encode_prompts.cache_clear()
    padded = text.generate_for_adapters(model, tokenizer, prompts, settings, adapters)
    assert shared == padded
    assert len({reply for replies in padded for reply in replies}) > 2  # the replies differ: the check has power
