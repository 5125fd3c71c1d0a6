"""Expert pools: memory-mapped reads, alignment errors, LoRA rank padding and alpha folding."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.experts import FullModelPool, LoraPool, open_pool


def test_sharded_and_single_file_experts_read_the_same_tensors(zoo, tmp_path):
    from transformers import AutoModelForCausalLM

    single = tmp_path / "single"
    AutoModelForCausalLM.from_pretrained(zoo.full[0]).save_pretrained(single)
    assert (zoo.full[0] / "model.safetensors.index.json").exists() and (single / "model.safetensors").exists()
    pool = FullModelPool([zoo.full[0], single])
    assert len(pool.files[0].weight_map) == len(pool.tensor_names) > 10
    assert len(set(pool.files[0].weight_map.values())) > 1  # really sharded
    for name in pool.tensor_names:
        assert torch.equal(pool.tensor(0, name), pool.tensor(1, name))


def _copy_with(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_mismatched_experts_name_the_tensor_and_expert(zoo, tmp_path):
    ok = zoo.full[1]
    name = "model.layers.1.mlp.up_proj.weight"
    wrong_shape = _copy_with(ok, tmp_path / "wide", lambda t: t.__setitem__(name, torch.zeros(3, 3)))
    with pytest.raises(ExpertError) as err:
        FullModelPool([ok, wrong_shape])
    assert name in str(err.value) and "'wide'" in str(err.value) and "[3, 3]" in str(err.value)

    missing = _copy_with(ok, tmp_path / "missing", lambda t: t.pop(name))
    with pytest.raises(ExpertError, match=f"'missing'.*no tensor '{name}'"):
        FullModelPool([ok, missing])

    extra = _copy_with(ok, tmp_path / "extra", lambda t: t.__setitem__("model.extra.weight", torch.zeros(2)))
    with pytest.raises(ExpertError, match="'extra'.*'model.extra.weight'"):
        FullModelPool([ok, extra])


def test_pickle_only_experts_are_refused(zoo, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(zoo.full[1], pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(ExpertError, match="only pickle weights .*pytorch_model.bin"):
        open_pool([zoo.full[1], pickled])


def test_mixed_and_unsupported_pools_are_refused(zoo, tmp_path):
    with pytest.raises(ExpertError, match="mix LoRA adapters"):
        open_pool([zoo.lora[0], zoo.full[0]])
    dora = tmp_path / "dora"
    shutil.copytree(zoo.lora[0], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ExpertError, match="DoRA"):
        open_pool([zoo.lora[0], dora])
    with pytest.raises(ExpertError, match="does not exist"):
        open_pool([zoo.lora[0], tmp_path / "nope"])


def test_lora_ranks_are_zero_padded_and_scalings_folded_into_b_exactly(zoo):
    pool = LoraPool(list(zoo.lora))
    assert pool.rank == 8
    # expert 0: r=2, alpha=4 -> 2.0; expert 1: r=4, alpha=4, rsLoRA -> 4/sqrt(4) = 2.0; expert 2: r=8, alpha=32 -> 4.0
    scales = [4 / 2, 4 / math.sqrt(4), 32 / 8]
    name_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    name_b = name_a.replace("lora_A", "lora_B")
    for k, (path, rank, scale) in enumerate(zip(zoo.lora, (2, 4, 8), scales)):
        with safe_open(str(path / "adapter_model.safetensors"), "pt") as raw:
            a, b = raw.get_tensor(name_a), raw.get_tensor(name_b)
        padded_a, padded_b = pool.tensor(k, name_a), pool.tensor(k, name_b)
        assert padded_a.shape == (8, a.shape[1]) and padded_b.shape == (b.shape[0], 8)
        assert torch.equal(padded_a[:rank], a) and not padded_a[rank:].any()
        assert torch.equal(padded_b[:, :rank], b * scale) and not padded_b[:, rank:].any()
        # the expert's own update is unchanged by padding and folding
        torch.testing.assert_close(padded_b @ padded_a, scale * (b @ a), rtol=1e-6, atol=1e-7)
    config = pool.output_config("base")
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (8, 8, False)


def test_padded_expert_in_the_resident_slot_matches_peft_loading_it(zoo, resident_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mergekit_swarm.weights.kernels import one_hot

    pool = LoraPool(list(zoo.lora))
    resident = resident_factory(pool, "tensor")
    layout = resident.layout
    ids = torch.tensor([[1, 20, 7, 8, 9, 40, 7]])
    for k, path in enumerate(zoo.lora):
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(zoo.base), path).eval()
        resident.load(one_hot(layout, len(pool), k))
        with torch.no_grad():
            torch.testing.assert_close(
                resident.model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-5, atol=1e-5
            )


def test_experts_adapting_other_modules_add_nothing_there(zoo, tmp_path):
    """A module an expert does not adapt is an update of zero for it (not an error, as it was)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = tmp_path / "qv_only"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(zoo.base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(other)
    pool = LoraPool([zoo.lora[0], other])
    down = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
    assert down in pool.tensor_names and not pool.tensor(1, down).any()
    assert pool.tensor(0, down).any()
    targets = pool.output_config("base")["target_modules"]  # every module some expert adapts, by full name
    assert "model.layers.0.mlp.down_proj" in targets and "model.layers.1.self_attn.v_proj" in targets


def test_corrupt_shard_is_a_clear_error(zoo, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(zoo.full[0], broken)
    shard = sorted(broken.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ExpertError, match=f"{shard.name}: cannot read tensor"):
        FullModelPool([zoo.full[1], broken])


@pytest.fixture(scope="module")
def embedding_adapters(zoo, tmp_path_factory):
    """Two adapters that also target the embeddings (PEFT then saves the embedding base layer
    too, identical in both) and train lm_head fully (modules_to_save, different in each)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("embedding_adapters")
    paths = []
    for k, rank in enumerate((2, 4)):
        torch.manual_seed(k)
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=["embed_tokens", "q_proj"],
            modules_to_save=["lm_head"],
            init_lora_weights=False,
        )
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(zoo.base), config)
        with torch.no_grad():
            model.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.05 * (k + 1))
        model.save_pretrained(root / f"e{k}")
        paths.append(root / f"e{k}")
    return paths


def test_embedding_lora_and_modules_to_save(zoo, resident_factory, embedding_adapters, tmp_path):
    import numpy as np
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mergekit_swarm.commands.apply import apply_recipe
    from mergekit_swarm.core.run_options import RunOptions
    from mergekit_swarm.output.mergekit_config import winner_recipe
    from mergekit_swarm.weights.kernels import one_hot

    pool = LoraPool(embedding_adapters)
    assert pool.constant_names == ["base_model.model.model.embed_tokens.base_layer.weight"]
    assert "base_model.model.lm_head.weight" in pool.tensor_names  # differs between experts: combined
    assert "base_model.model.model.embed_tokens.lora_embedding_A" in pool.tensor_names
    resident = resident_factory(pool, "tensor")
    layout = resident.layout
    ids = torch.tensor([[1, 20, 7, 8, 9, 40, 7]])
    for k, path in enumerate(embedding_adapters):
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(zoo.base), path).eval()
        resident.load(one_hot(layout, 2, k))
        with torch.no_grad():
            torch.testing.assert_close(
                resident.model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-5, atol=1e-5
            )

    coefficients = np.random.default_rng(0).normal(0.5, 0.4, size=(len(layout), 2))
    resident.load(coefficients)
    recipe = tmp_path / "weights.yml"  # the winner-recipe path: written as weights, applied back
    text = winner_recipe(
        pool, layout, coefficients, models=[str(p) for p in pool.paths], base_model=str(zoo.base), dtype=None, out_dtype=None
    )
    recipe.write_text(text)
    out = apply_recipe(recipe, tmp_path / "adapter", RunOptions(quiet=True))
    written = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(zoo.base), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(written(input_ids=ids).logits, resident.model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
