"""Materialisation: float32 accumulation in expert order, bit-identical to mergekit's linear,
written in place into the resident model without leaking state between particles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergekit_swarm.experts import FullModelPool, open_pool
from mergekit_swarm.experts.groups import group_layout
from mergekit_swarm.weights.kernels import combine


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_combine_is_bit_identical_to_mergekit_linear_unnormalised(tmp_path, dtype):
    from mergekit.merge_methods import merge_tensors

    gen = torch.Generator().manual_seed(1)
    shapes = {"a.weight": (33, 17), "b.bias": (9,)}
    experts = []
    for k in range(5):
        tensors = {n: torch.randn(s, generator=gen).to(dtype) for n, s in shapes.items()}
        (tmp_path / f"e{k}").mkdir()
        save_file(tensors, str(tmp_path / f"e{k}" / "model.safetensors"))
        experts.append(tensors)
    pool = FullModelPool([tmp_path / f"e{k}" for k in range(5)])
    layout = group_layout(pool, "tensor")
    coefficients = np.random.default_rng(0).normal(size=(len(layout), 5)) * 1.7
    for (name, ours), group in zip(combine(pool, layout, coefficients), layout.of_tensor):
        theirs = merge_tensors(
            [e[name] for e in experts], "linear", parameters={"weight": coefficients[group].tolist(), "normalize": False}
        )
        assert ours.dtype == dtype
        assert torch.equal(ours, theirs), name


def test_a_wider_target_gets_the_rounded_merge(tmp_path):
    """A bf16 checkpoint written into a float32 parameter (e.g. `_keep_in_fp32_modules`) holds
    mergekit's bf16 result, not the unrounded float32 sum."""
    from mergekit_swarm.weights.kernels import write_combinations

    gen = torch.Generator().manual_seed(2)
    for k in range(3):
        (tmp_path / f"e{k}").mkdir()
        save_file({"w": torch.randn(64, generator=gen).to(torch.bfloat16)}, str(tmp_path / f"e{k}" / "model.safetensors"))
    pool = FullModelPool([tmp_path / f"e{k}" for k in range(3)])
    weights = np.array([[0.3, 0.45, 0.25]])
    reference = dict(combine(pool, group_layout(pool, "tensor"), weights))["w"]
    target = torch.empty(64, dtype=torch.float32)
    write_combinations(pool, pool.specs[0], weights, [target])
    assert reference.dtype == torch.bfloat16 and torch.equal(target, reference.float())


def test_layouts_group_tensors_by_model_layer_and_tensor(zoo):
    full = open_pool(list(zoo.full))
    assert group_layout(full, "model").names == ("model",)
    layer = group_layout(full, "layer")
    assert {"model.layers.0", "model.layers.1"} <= set(layer.names)
    assert "model.embed_tokens.weight" in layer.names and "lm_head.weight" in layer.names
    assert len(group_layout(full, "tensor")) == len(full.tensor_names)
    lora = open_pool(list(zoo.lora))
    tensor = group_layout(lora, "tensor")
    assert len(tensor) == len(lora.tensor_names) // 2  # lora_A and lora_B of a module share a group
    name = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"
    i = lora.tensor_names.index(name)
    j = lora.tensor_names.index(name.replace("lora_A", "lora_B"))
    assert tensor.of_tensor[i] == tensor.of_tensor[j]
    assert group_layout(lora, "layer").names == ("base_model.model.model.layers.0", "base_model.model.model.layers.1")


def test_layer_groups_keep_the_blocks_of_two_towers_apart():
    from mergekit_swarm.experts.groups import group_key

    assert group_key("vision_tower.encoder.layers.3.mlp.fc1.weight", "layer") == "vision_tower.encoder.layers.3"
    assert group_key("language_model.model.layers.3.mlp.up_proj.weight", "layer") == "language_model.model.layers.3"
    assert group_key("transformer.h.11.attn.c_attn.weight", "layer") == "transformer.h.11"
    assert group_key("gpt_neox.layers.4.attention.dense.weight", "layer") == "gpt_neox.layers.4"
    assert group_key("model.decoder.layers.2.fc1.weight", "layer") == "model.decoder.layers.2"  # OPT
    assert group_key("model.layers.5.block_sparse_moe.experts.7.w1.weight", "layer") == "model.layers.5"  # MoE experts
    assert group_key("base_model.model.model.layers.1.mlp.experts.base_layer", "layer") == "base_model.model.model.layers.1"
    assert group_key("gpt_neox.embed_in.weight", "layer") == "gpt_neox.embed_in.weight"
    assert group_key("model.norm.weight", "layer") == "model.norm.weight"


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_resident_model_holds_exactly_the_particle_and_nothing_else(zoo, resident_factory, kind):
    resident = resident_factory(zoo.full if kind == "full" else zoo.lora, "layer")  # full: on the first expert; LoRA: the base
    pool, layout = resident.pool, resident.layout
    rng = np.random.default_rng(3)
    first = rng.dirichlet(np.ones(3), size=len(layout))
    second = rng.normal(size=(len(layout), 3))
    ids = torch.tensor([[1, 20, 7, 8, 9, 40, 7]])

    resident.load(first)
    expected = dict(combine(pool, layout, first))
    for name, tensor in expected.items():
        assert torch.equal(resident.tensors()[name], tensor), name
    with torch.no_grad():
        logits_first = resident.model(input_ids=ids).logits.clone()
    resident.load(second)
    with torch.no_grad():
        assert not torch.equal(resident.model(input_ids=ids).logits, logits_first)
    resident.load(first)
    with torch.no_grad():
        assert torch.equal(resident.model(input_ids=ids).logits, logits_first)
