"""LoRA experts searched in update space: a particle is W0 + sum_k c_k s_k B_k A_k exactly.

Checked against the experts baked into their base with PEFT's own `merge_and_unload` and mixed
linearly (mixed ranks, alphas and rsLoRA in the zoo, and an expert adapting fewer modules), through
the stacked multi-slot forward, the written adapter, and stock mergekit's `base+adapter` recipe.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from mergekit_swarm.commands.rescore import score_folder
from mergekit_swarm.commands.run import RunOptions, run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.experts import LoraPool
from tests.helpers import write_recipe

PROMPTS = ["sort cab=", "reverse abc=", "copy hello="]


@pytest.fixture(scope="module")
def pool_paths(zoo, tmp_path_factory):
    """The zoo's three adapters (ranks 2, 4, 8; alphas 4, 4, 32; one rsLoRA) and one adapting q/v only."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(zoo.base), LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj"])
    )
    for name, param in model.named_parameters():  # a trained-looking adapter: B is not zero
        if "lora_B" in name:
            param.data.normal_(0, 0.2)
    folder = tmp_path_factory.mktemp("qv") / "qv_only"
    model.save_pretrained(folder)
    return [*zoo.lora, folder]


def baked_mix(zoo, paths, coefficients: np.ndarray) -> dict[str, torch.Tensor]:
    """W0 + sum_k c_k (W_k - W0), W_k expert k baked into the base by PEFT (one coefficient per expert)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = {k: v.double() for k, v in AutoModelForCausalLM.from_pretrained(zoo.base).state_dict().items()}
    mix = {k: v.clone() for k, v in base.items()}
    for c, path in zip(coefficients, paths):
        baked = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(zoo.base), path).merge_and_unload()
        for name, tensor in baked.state_dict().items():
            mix[name] += c * (tensor.double() - base[name])
    return mix


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.double()


@pytest.mark.parametrize("coefficients", [[0.5, 0.3, 0.1, 0.1], [0.9, 0.6, -0.3, -0.2]])
def test_an_update_space_particle_is_the_linear_mix_of_the_baked_experts(
    zoo, tokenizer, resident_factory, pool_paths, coefficients
):
    from transformers import AutoModelForCausalLM

    pool = LoraPool(pool_paths, space="update")
    assert pool.rank == 2 + 4 + 8 + 3  # q_proj and v_proj: every expert's rank, one after the other
    c = np.asarray(coefficients)[None]
    resident = resident_factory(pool, "model", model_dtype=torch.float32, slots=2)
    resident.load_many([c, np.eye(4)[[2]]])
    reference = AutoModelForCausalLM.from_pretrained(zoo.base, dtype=torch.float64)
    reference.load_state_dict(baked_mix(zoo, pool_paths, c[0]))
    expected = logits(reference, tokenizer)
    assert torch.allclose(logits(resident.model, tokenizer), expected, atol=1e-5)
    # the same through the stacked forward of two slots in one batch
    from mergekit_swarm.utilities.text import logprobs_for_adapters

    pairs = [(p, "ab") for p in PROMPTS]
    stacked = logprobs_for_adapters(resident.model, tokenizer, pairs, batch_size=8, adapters=resident.slot_names)
    alone = [logprobs_for_adapters(resident.model, tokenizer, pairs, batch_size=8, adapters=[s])[0] for s in resident.slot_names]
    assert stacked == alone and resident.stack.stacked_forwards > 0


def test_factor_and_update_space_differ_where_the_paper_has_cross_terms(zoo, tokenizer, resident_factory, pool_paths):
    """At c = (1/2, 1/2) factor space is (B1 + B2)(A1 + A2)/4, not (B1 A1 + B2 A2)/2."""
    half = np.array([[0.5, 0.5, 0.0, 0.0]])
    outputs = {}
    for space in ("factor", "update"):
        pool = LoraPool(pool_paths, space=space)
        resident = resident_factory(pool, "model")
        resident.load(half)
        outputs[space] = logits(resident.model, tokenizer)
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(zoo.base, dtype=torch.float64)
    reference.load_state_dict(baked_mix(zoo, pool_paths, half[0]))
    expected = logits(reference, tokenizer)
    assert torch.allclose(outputs["update"], expected, atol=1e-5)
    assert not torch.allclose(outputs["factor"], expected, atol=1e-3)


@pytest.fixture(scope="module")
def update_run(zoo, pool_paths, tmp_path_factory):
    folder = tmp_path_factory.mktemp("update-run")
    utility = {"type": "nll", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 16}
    runs = {}
    for granularity in ("model", "layer"):
        recipe = write_recipe(
            folder / granularity,
            pool_paths,
            base=zoo.base,
            utility=utility,
            swarm={"lora_space": "update", "granularity": granularity, "particles": 5, "max_iterations": 2},
            evaluation={"particles_per_batch": "auto"},
        )
        out = folder / granularity / "out"
        options = RunOptions(quiet=True, svd_rank=8 if granularity == "model" else None)
        runs[granularity] = (recipe, out, run_swarm(load_recipe(recipe), out, options))
    return runs


@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_the_written_adapter_reproduces_the_recorded_utility(update_run, granularity):
    recipe, out, result = update_run[granularity]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 2 + 4 + 8 + 3
    assert score_folder(load_recipe(recipe).resolve(), out, "dev").value == result.winner_dev  # PeftModel.from_pretrained
    assert "update space" in (out / "README.md").read_text()


@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_stock_mergekit_bakes_and_mixes_the_experts_into_the_merged_winner(zoo, update_run, granularity, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    _, out, _ = update_run[granularity]
    text = (out / "mergekit_config.yml").read_text()
    assert "--lora-merge-cache" in text.splitlines()[1]
    config = yaml.safe_load(text)
    assert config["merge_method"] == "linear" and all("+" in m["model"] for m in config["models"])
    run_merge(
        MergeConfiguration.model_validate(config),
        str(tmp_path / "stock"),
        options=MergeOptions(lora_merge_cache=str(tmp_path / "cache"), quiet=True),
    )
    stock = load_file(str(tmp_path / "stock" / "model.safetensors"))
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(zoo.base), out).merge_and_unload().state_dict()
    assert set(stock) <= set(merged)
    for name, tensor in stock.items():
        assert torch.allclose(tensor, merged[name], atol=1e-6, rtol=1e-5), name


def test_the_winner_compressed_by_svd_is_written_beside_it_with_its_own_utility(update_run):
    recipe, out, result = update_run["model"]
    compressed = out / "svd-rank-8"
    assert json.loads((compressed / "adapter_config.json").read_text())["r"] == 8
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 17  # the exact winner stays the output
    assert result.compressed["rank"] == 8 and 0 < result.compressed["max_relative_error"] < 1
    resolved = load_recipe(recipe).resolve()
    assert result.compressed["dev"] == score_folder(resolved, compressed, "dev").value
    assert result.compressed["test"] == score_folder(resolved, compressed, "test").value
    assert result.compressed["dev"] != result.winner_dev  # a rank-8 copy of a rank-17 update is not the winner
    assert "winner compressed to rank 8" in (out / "README.md").read_text()
    assert json.loads((out / "swarm_result.json").read_text())["compressed"] == result.compressed


def test_with_the_base_as_an_expert_the_experts_coefficients_are_free(zoo, tokenizer, resident_factory, pool_paths, tmp_path):
    """W0 + 0.6 D1 + 0.6 D2: a total of 1.2, reached with the base's coefficient at -0.2."""
    from transformers import AutoModelForCausalLM

    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.experts import open_recipe_pool

    utility = {"type": "nll", "dev": str(zoo.dev), "batch_size": 16}
    swarm = {"lora_space": "update", "base_as_expert": True, "particles": 5, "max_iterations": 1}
    recipe_file = write_recipe(tmp_path, pool_paths[:2], base=zoo.base, utility=utility, swarm=swarm)
    recipe = load_recipe(recipe_file).resolve()
    pool = open_recipe_pool(recipe)
    assert len(pool) == 3 and pool.names[-1] == "base (no update)"
    c = np.array([[0.6, 0.6, -0.2]])
    resident = resident_factory(pool, "model")
    resident.load(c)
    reference = AutoModelForCausalLM.from_pretrained(zoo.base, dtype=torch.float64)
    reference.load_state_dict(baked_mix(zoo, pool_paths[:2], c[0, :2]))
    assert torch.allclose(logits(resident.model, tokenizer), logits(reference, tokenizer), atol=1e-5)

    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_file), out, RunOptions(quiet=True))
    assert result.experts[-1] == "base (no update)" and score_folder(recipe, out, "dev").value == result.winner_dev
    models = [m["model"] for m in yaml.safe_load((out / "mergekit_config.yml").read_text())["models"]]
    assert models[-1] == str(zoo.base) and all("+" in m for m in models[:-1])  # the base as it is, the experts baked
