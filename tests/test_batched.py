"""The fast paths give exactly what the simple ones give: chunked multi-particle
materialisation against the reference combination, and mixed-adapter batched evaluation
against one particle at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergekit_swarm.commands.run import RunOptions, run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.experts import FullModelPool, open_pool
from mergekit_swarm.experts.groups import group_layout
from mergekit_swarm.search.evaluator import LocalEvaluator
from mergekit_swarm.utilities import validate_utility
from mergekit_swarm.weights.kernels import Accumulator, combine, combine_tensor, write_combinations
from mergekit_swarm.weights.resident import ResidentModel
from tests.helpers import FailsOnSlot, experts_answers, multitask_of_exact_match_and_nll


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory):
    """Four experts with odd-sized tensors; expert 2 stores one tensor in another dtype."""
    root = tmp_path_factory.mktemp("mixed")
    gen = torch.Generator().manual_seed(5)
    shapes = {"big.weight": (301, 77), "odd.bias": (13,), "one": (1,)}
    for k in range(4):
        tensors = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
        tensors["big.weight"] = tensors["big.weight"].to(torch.bfloat16 if k != 2 else torch.float32)
        tensors["odd.bias"] = tensors["odd.bias"].to(torch.float16)
        (root / f"e{k}").mkdir()
        save_file(tensors, str(root / f"e{k}" / "model.safetensors"))
    return FullModelPool([root / f"e{k}" for k in range(4)])


@pytest.mark.parametrize("chunk", [7, 1000, 1 << 20])  # many chunks with ragged ends, a few, one
@pytest.mark.parametrize(
    "dtype, out_dtype", [(None, None), (torch.float32, None), (None, torch.float32), (torch.float64, torch.bfloat16)]
)
def test_chunked_multi_particle_writes_equal_the_reference_combination(mixed_pool, chunk, dtype, out_dtype):
    weights = np.random.default_rng(chunk).normal(size=(3, 4)) * 1.3
    accumulator = Accumulator("cpu", elements=chunk)
    for spec in mixed_pool.specs:
        targets = [torch.full(spec.shape, float("nan"), dtype=out_dtype or spec.torch_dtype) for _ in range(3)]
        write_combinations(mixed_pool, spec, weights, targets, dtype=dtype, out_dtype=out_dtype, accumulator=accumulator)
        for row, target in zip(weights, targets):
            expected = combine_tensor(mixed_pool, spec.name, row, dtype=dtype).to(out_dtype or spec.torch_dtype)
            assert target.dtype == expected.dtype
            assert torch.equal(target, expected), (spec.name, chunk)


def test_combine_streams_the_reference_combination(mixed_pool):
    layout = group_layout(mixed_pool, "tensor")
    coefficients = np.random.default_rng(1).normal(size=(len(layout), 4))
    for (name, tensor), group in zip(combine(mixed_pool, layout, coefficients), layout.of_tensor):
        spec = next(s for s in mixed_pool.specs if s.name == name)
        assert torch.equal(tensor, combine_tensor(mixed_pool, name, coefficients[group]).to(spec.torch_dtype)), name


def test_lora_slots_are_filled_in_one_pass_with_each_particle(zoo, resident_factory):
    resident = resident_factory(zoo.lora, "layer", slots=3)
    pool, layout = resident.pool, resident.layout
    particles = [np.random.default_rng(i).normal(size=(len(layout), 3)) for i in range(3)]

    def no_reads(k, name):
        raise AssertionError(f"read {name} of expert {k} again")

    pool.tensor = no_reads  # prepared adapters are kept in memory: a pass reads no file
    try:
        assert resident.load_many(particles) == ["swarm", "swarm_1", "swarm_2"]
    finally:
        del pool.tensor
    for slot, coefficients in enumerate(particles):
        for name, tensor in combine(pool, layout, coefficients):
            assert torch.equal(resident.tensors(slot)[name], tensor), (slot, name)
    assert resident.model.active_adapter == "swarm"


@pytest.mark.parametrize("block, scratch", [(40, 50), (10**6, 10**6)])  # blocks of single tensors (some larger than
def test_flat_groups_equal_the_reference_combination(zoo, block, scratch):  # the scratch buffer), one block
    from mergekit_swarm.weights.kernels import FlatGroup

    pool = open_pool(list(zoo.lora))
    specs = [s for s in pool.specs if pool.in_memory(s.name)]
    assert len(specs) == len(pool.specs) > 10
    flat = FlatGroup(pool, specs, dtype=None, accumulator=Accumulator("cpu", elements=scratch), block_elements=block)
    weights = np.random.default_rng(4).normal(size=(2, 3))
    targets = [{s.name: torch.empty(s.shape, dtype=s.torch_dtype) for s in specs} for _ in range(2)]
    flat.write(weights, targets, out_dtype=None)
    for p in range(2):
        for spec in specs:
            expected = combine_tensor(pool, spec.name, weights[p]).to(spec.torch_dtype)
            assert torch.equal(targets[p][spec.name], expected), spec.name


def test_full_pools_have_a_single_slot(zoo, tokenizer):
    pool = open_pool(list(zoo.full))
    with pytest.raises(ValueError, match="only LoRA pools"):
        ResidentModel.open(
            pool, group_layout(pool, "model"), model_source=zoo.full[0], tokenizer=tokenizer, model_dtype=None, slots=2
        )


def _utilities(zoo, prompts_file):
    generation = {"dev": str(zoo.dev), "batch_size": 5, "max_new_tokens": 6}
    configs = {
        "exact_match": {"type": "exact_match", **generation},
        "nll": {"type": "nll", "dev": str(zoo.dev), "batch_size": 7},
        "multiple_choice": {"type": "multiple_choice", "dev": str(zoo.mc_dev), "batch_size": 4},
        "multitask": multitask_of_exact_match_and_nll(zoo, generation),
        "python": {"type": "python", "function": f"{prompts_file}:score"},  # not batchable: slot by slot
    }
    return {name: validate_utility(config).build("dev") for name, config in configs.items()}


PYTHON_UTILITY = """
import torch

def score(model, tokenizer):
    ids = tokenizer(["sort cab=", "copy ab="], return_tensors="pt", padding=True)
    with torch.no_grad():
        return float(model(**ids).logits.float().mean())
"""


def test_batched_mixed_adapter_evaluation_equals_one_at_a_time(zoo, resident_factory, tmp_path):
    (tmp_path / "objective.py").write_text(PYTHON_UTILITY)
    pool = open_pool(list(zoo.lora))
    residents = {slots: resident_factory(pool, "tensor", slots=slots) for slots in (1, 4)}
    layout = residents[1].layout
    rng = np.random.default_rng(11)
    particles = [np.eye(3)[k][None].repeat(len(layout), 0) for k in range(3)] + [
        rng.dirichlet(np.ones(3), size=len(layout)) * 1.5 - 0.2 for _ in range(4)
    ]  # experts and mixtures: 7 particles, so the last group of 4 slots is partly filled
    for name, utility in _utilities(zoo, tmp_path / "objective.py").items():
        one_at_a_time = list(LocalEvaluator(residents[1], utility).evaluate(particles))
        batched = list(LocalEvaluator(residents[4], utility).evaluate(particles))
        assert not any(e.failed for e in one_at_a_time + batched), name
        assert [e.utility for e in batched] == [e.utility for e in one_at_a_time], name
        assert [e.details for e in batched] == [e.details for e in one_at_a_time], name
        if name != "multiple_choice":  # (every particle gets these easy choices right)
            assert len({e.utility for e in batched}) > 1, name  # the particles really differ


def test_a_failing_batch_is_scored_again_particle_by_particle(zoo, resident_factory):
    resident = resident_factory(zoo.lora, "model", slots=3)
    results = list(LocalEvaluator(resident, FailsOnSlot()).evaluate([np.eye(3)[[k]] for k in range(3)]))
    assert [r.utility for r in results] == [1.0, -np.inf, 0.0]
    assert results[1].error == "ValueError: bad particle" and results[0].details == {"seen": 1.0}
    assert resident.model.active_adapter == "swarm"


def _search_with_batches(recipe_factory, tmp_path, zoo, tokenizer, kind: str, batch, device: str = "cpu") -> dict:
    """The same search with 1 particle per batch and with `batch`: result and history of each."""
    dev = experts_answers(zoo, kind, tokenizer, tmp_path)
    utility = {"type": "exact_match", "dev": str(dev), "test": str(zoo.test), "batch_size": 8, "max_new_tokens": 6}
    runs, companies = {}, {}
    for size in (1, batch):
        recipe = recipe_factory(
            kind,
            swarm={"particles": 5},
            utility=utility,
            evaluation={"particles_per_batch": size},
            folder=tmp_path / f"r{size}",
        )
        result = run_swarm(load_recipe(recipe), tmp_path / f"out{size}", RunOptions(quiet=True, device=device))
        lines = (tmp_path / f"out{size}" / "swarm_history.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        companies[size] = [row.get("shared_by", 1) for row in rows]
        history = [{k: v for k, v in row.items() if k not in ("wall_time", "shared_by")} for row in rows]
        runs[size] = (result.coefficients, result.winner_dev, result.expert_test, result.winner_test, result.fallbacks, history)
        timing = result.timing or {}
        assert 0 < timing["evaluation_seconds"] < timing["search_seconds"], size  # the card's split of the time
    assert set(companies[1]) == {1} and max(companies[batch]) > 1  # the history says which were scored together
    return runs


@pytest.mark.parametrize("batch", [3, "auto"])
def test_particles_per_batch_does_not_change_the_search(recipe_factory, tmp_path, zoo, tokenizer, batch):
    """Particles scored together (3 per batch, or `auto`: every particle of an iteration) give the
    search of one at a time, bit for bit, with no fallback, on particles that score differently."""
    runs = _search_with_batches(recipe_factory, tmp_path, zoo, tokenizer, "lora", batch)
    assert runs[1] == runs[batch] and runs[batch][4] == 0
    assert len({line["utility"] for line in runs[batch][5]}) > 2  # the particles really differ


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_on_cuda_auto_batches_give_the_search_of_one_at_a_time(recipe_factory, tmp_path, zoo, tokenizer, kind):
    """`--device cuda` end to end: `auto` sizes the batch on the real device (LoRA: stacked adapters;
    full pools: experts held on the GPU) and the search equals one particle at a time."""
    runs = _search_with_batches(recipe_factory, tmp_path, zoo, tokenizer, kind, "auto", device="cuda")
    assert runs[1] == runs["auto"] and runs["auto"][4] == 0
    assert len({line["utility"] for line in runs["auto"][5]}) > 2  # the particles really differ


class ShortBatch(FailsOnSlot):
    """Batched scoring returns one score too few: the group is scored one by one instead."""

    def score_adapters(self, model, tokenizer, adapters):
        return [0.5] * (len(adapters) - 1)

    def __call__(self, model, tokenizer):
        return float(model.active_adapter == "swarm")


def test_a_batch_with_too_few_scores_is_scored_particle_by_particle(zoo, resident_factory):
    resident = resident_factory(zoo.lora, "model", slots=3)
    results = list(LocalEvaluator(resident, ShortBatch()).evaluate([np.eye(3)[[k]] for k in range(3)]))
    assert [r.utility for r in results] == [1.0, 0.0, 0.0]
