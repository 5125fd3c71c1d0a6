"""Packed tensors: experts held on the device and the resident model's parameters laid end to end,
so that a particle is written by a few operations per run of tensors, with the same bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergekit_swarm.core.packing import pack, pack_parameters, span
from mergekit_swarm.weights import kernels, writer


def test_a_span_covers_only_tensors_lying_end_to_end():
    a, b, half, c = pack([torch.arange(6.0).view(2, 3), torch.arange(4.0), torch.ones(3).half(), torch.full((2,), 7.0)], "cpu")
    assert torch.equal(span([a, b, c]), torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 7, 7.0]))
    assert half.dtype == torch.float16 and torch.equal(half, torch.ones(3).half())  # a buffer of its own
    span([b, c]).fill_(-1)  # writing into the span writes into the tensors
    assert torch.equal(b, -torch.ones(4)) and torch.equal(c, -torch.ones(2)) and torch.equal(a, torch.arange(6.0).view(2, 3))
    assert span([a, c]) is None  # a gap
    assert span([b, a]) is None  # out of order
    assert span([a, half]) is None  # another dtype and buffer
    assert span([a.t(), b]) is None  # not contiguous
    assert span([torch.zeros(4), torch.zeros(4)]) is None  # two storages, wherever they lie


def test_packed_parameters_keep_the_model_and_its_tied_weights():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    state = model.state_dict()
    order = [name for name in state if name != "lm_head.weight"]  # the checkpoint of a tied model
    direct = {name: state[name] for name in [*order, "lm_head.weight"]}
    assert pack_parameters(model, direct, order) == len(order)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    tied = direct["lm_head.weight"], direct["model.embed_tokens.weight"], model.lm_head.weight
    assert len({tensor.data_ptr() for tensor in tied}) == 1
    whole = span([direct[name] for name in order])
    assert whole is not None and whole.numel() == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
        whole.mul_(2)  # written through the run, seen by the model
        assert torch.equal(model.model.norm.weight, 2 * torch.ones(16))
        assert not torch.equal(model(input_ids=ids).logits, before)


@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_held_experts_are_written_in_runs_with_the_same_bits(zoo, resident_factory, monkeypatch, granularity):
    """`--read-to-gpu` (here: held in RAM): one `write_flat` per group instead of one per tensor, and
    the very bits of the memory-mapped, per-tensor way, with accumulator chunks that cut across tensors."""
    monkeypatch.setattr(kernels, "CPU_CHUNK_ELEMENTS", 1000)
    calls = []
    write_flat = writer.write_flat
    monkeypatch.setattr(writer, "write_flat", lambda *a, **k: calls.append(len(a[0][0])) or write_flat(*a, **k))
    coefficients = None
    states = []
    for hold in (False, True):
        resident = resident_factory(zoo.full, granularity, hold_experts=hold)
        pool, layout = resident.pool, resident.layout
        coefficients = np.random.default_rng(2).normal(size=(len(layout), 3))
        calls.clear()
        resident.load(coefficients)
        assert len(calls) == (len(layout) if hold else len(pool.specs)), hold
        runs = resident._writer.direct_runs(resident._destinations)
        assert all((run.packed_sources is not None) == (len(run.specs) > 1) for run in runs)  # read per write: not kept
        assert sum(calls) == sum(p.numel() for p in resident.model.parameters())  # every element once, tied ones once
        states.append({k: v.clone() for k, v in resident.model.state_dict().items()})
        if hold:  # held again (a second resident model on the held pool): nothing is copied again
            held = pool.tensor(1, pool.specs[0].name)
            assert pool.held("cpu").tensor(1, pool.specs[0].name) is held
    assert len(pool.specs) > len(layout)
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k].view(torch.int32), states[1][k].view(torch.int32)) for k in states[0])


def test_parameters_moved_after_a_first_write_still_get_the_particle(zoo, resident_factory):
    """The runs of a resident model are worked out again when its tensors have moved since."""
    resident = resident_factory(zoo.full, "model")
    pool, layout = resident.pool, resident.layout
    first, second = np.random.default_rng(4).dirichlet(np.ones(3), size=(2, len(layout)))
    resident.load(first)
    pack_parameters(resident.model, resident.tensors(), pool.tensor_names)
    resident.load(second)
    parameters = dict(resident.model.named_parameters())
    for name, tensor in kernels.combine(pool, layout, second):
        assert torch.equal(resident.tensors()[name], tensor) and torch.equal(parameters[name], tensor), name
