"""End to end, in process: recipe -> search -> a folder that transformers/PEFT load as the winner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mergekit_swarm.commands.run import RunOptions, run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import OutputError, UtilityError
from mergekit_swarm.core.names import OUTPUT_MARKER
from mergekit_swarm.output.result import SwarmResult
from mergekit_swarm.utilities.data import load_examples
from mergekit_swarm.utilities.nll import NegativeLoss

QUIET = RunOptions(quiet=True)


def dev_nll(model, zoo) -> float:
    from transformers import AutoTokenizer

    return NegativeLoss(load_examples(zoo.dev), batch_size=16)(model.eval(), AutoTokenizer.from_pretrained(zoo.base))


def history(out) -> list[dict]:
    return [json.loads(line) for line in (out / "swarm_history.jsonl").read_text().splitlines()]


def evaluations(out) -> list[dict]:
    """The history without wall times: what must repeat exactly."""
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in history(out)]


@pytest.mark.parametrize("granularity", ["model", "layer", "tensor"])
def test_lora_pool_writes_a_peft_adapter_that_is_the_winner(zoo, recipe_factory, tmp_path, granularity):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_factory("lora", swarm={"granularity": granularity})), out, QUIET)

    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "swarm.yml",
        "swarm_history.jsonl",
        "swarm_history.png",
        "swarm_state.json",
        "swarm_result.json",
        "tokenizer.json",
    } <= {p.name for p in out.iterdir()}
    assert not (tmp_path / ".out.partial").exists()
    coefficients = np.array(result.coefficients)
    np.testing.assert_allclose(coefficients.sum(axis=1), 1.0, atol=1e-9)
    assert coefficients.shape[0] == {"model": 1, "layer": 2, "tensor": 14}[granularity]
    assert result.winner_dev >= max(result.expert_dev)
    assert len(history(out)) == result.evaluations == (result.iterations + 1) * 4

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(zoo.base), out)
    assert dev_nll(model, zoo) == pytest.approx(result.winner_dev, rel=1e-6)


@pytest.mark.parametrize("granularity", ["model", "layer", "tensor"])
def test_full_pool_writes_a_sharded_model_that_is_the_winner(zoo, recipe_factory, tmp_path, granularity):
    from transformers import AutoModelForCausalLM

    from mergekit_swarm.experts import open_pool
    from mergekit_swarm.experts.groups import group_layout
    from mergekit_swarm.weights.kernels import combine

    out = tmp_path / "out"
    result = run_swarm(
        load_recipe(recipe_factory("full", swarm={"granularity": granularity})),
        out,
        RunOptions(quiet=True, out_shard_size=80_000),
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = AutoModelForCausalLM.from_pretrained(out)
    assert dev_nll(model, zoo) == pytest.approx(result.winner_dev, rel=1e-6)
    pool = open_pool(list(zoo.full))
    state = model.state_dict()
    for name, tensor in combine(pool, group_layout(pool, granularity), np.array(result.coefficients)):
        assert torch.equal(state[name], tensor), name
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (out / "generation_config.json").read_text() == (zoo.full[0] / "generation_config.json").read_text()


def test_a_full_pools_resident_model_is_freed_before_the_winner_is_written(recipe_factory, tmp_path, monkeypatch):
    """The winner is combined from the experts into in-memory shards (up to --out-shard-size): with the
    resident model still alive, the run's peak was two models (issue: full-pool memory)."""
    import weakref

    from mergekit_swarm.commands import run as run_module
    from mergekit_swarm.weights.resident import ResidentModel

    opened, alive_at_write = [], []
    open_resident, write = ResidentModel.open.__func__, run_module.write_model_folder

    def spy_open(cls, *args, **kwargs):
        resident = open_resident(cls, *args, **kwargs)
        opened.append(weakref.ref(resident.model))
        return resident

    def spy_write(*args, **kwargs):
        alive_at_write.append([ref() is not None for ref in opened])
        return write(*args, **kwargs)

    monkeypatch.setattr(ResidentModel, "open", classmethod(spy_open))
    monkeypatch.setattr(run_module, "write_model_folder", spy_write)
    run_swarm(load_recipe(recipe_factory("full")), tmp_path / "out", RunOptions(quiet=True))
    assert alive_at_write == [[False]]


def test_merge_lora_writes_the_base_with_the_winner_baked_in(zoo, recipe_factory, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_factory("lora")), out, RunOptions(quiet=True, merge_lora=True))
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    assert dev_nll(AutoModelForCausalLM.from_pretrained(out), zoo) == pytest.approx(result.winner_dev, rel=1e-4)
    assert result.output_kind == "lora-merged"


def test_reports_card_plot_and_recipe_copy(zoo, recipe_factory, tmp_path):
    recipe_path = recipe_factory(
        "lora", utility={"type": "exact_match", "dev": str(zoo.dev), "test": str(zoo.test), "max_new_tokens": 4}
    )
    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_path), out, QUIET)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\ntags:\n- merge\n- mergekit\n- model-swarms\n---")
    for name, dev, test in zip(result.experts, result.expert_dev, result.expert_test):
        assert f"| {name} | {dev:.4f} | {test:.4f} |" in card
    assert f"| **swarm winner** | **{result.winner_dev:.4f}** | **{result.winner_test:.4f}** |" in card
    assert "![search history](swarm_history.png)" in card and "| inertia | 0.2 |" in card
    assert (out / "swarm_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert recipe_path.read_text() in (out / "swarm.yml").read_text()
    rows = history(out)
    assert [(r["iteration"], r["particle"]) for r in rows[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert all(0 <= r["utility"] <= 1 and r["wall_time"] > 0 for r in rows)
    summary = result.summary()
    assert "swarm winner" in summary and f"{result.winner_test:.4f}" in summary


def test_same_seed_same_winner_bit_for_bit(recipe_factory, tmp_path):
    recipe = load_recipe(recipe_factory("lora", swarm={"granularity": "layer", "max_iterations": 3}))
    run_swarm(recipe, tmp_path / "a", QUIET)
    run_swarm(recipe, tmp_path / "b", QUIET)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "adapter_model.safetensors").read_bytes() == (b / "adapter_model.safetensors").read_bytes()
    assert evaluations(a) == evaluations(b)


def test_existing_output_is_refused_unless_overwrite(recipe_factory, tmp_path):
    recipe = load_recipe(recipe_factory("lora"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        run_swarm(recipe, out, QUIET)
    assert (out / "precious.txt").read_text() == "user data"
    assert not (tmp_path / ".out.partial").exists()
    with pytest.raises(OutputError, match="is not an output of mergekit-swarm .* --overwrite only replaces an earlier output"):
        run_swarm(recipe, out, RunOptions(quiet=True, overwrite=True))  # a folder of the user's: never replaced
    assert (out / "precious.txt").read_text() == "user data" and not (tmp_path / ".out.partial").exists()
    (out / "precious.txt").unlink()  # an empty folder made for the output is fine
    run_swarm(recipe, out, RunOptions(quiet=True, overwrite=True))
    assert (out / "adapter_model.safetensors").exists()
    with pytest.raises(OutputError, match="already holds a finished run of this recipe"):
        run_swarm(recipe, out, QUIET)
    first = SwarmResult.read(out)
    history_before = (out / "swarm_history.jsonl").read_bytes()
    again = run_swarm(recipe, out, RunOptions(quiet=True, resume=True))  # finished: returned, nothing evaluated
    assert again == first and (out / "swarm_history.jsonl").read_bytes() == history_before


INTERRUPTIBLE = """
import os
from pathlib import Path

from mergekit_swarm.utilities.data import load_examples
from mergekit_swarm.utilities.nll import NegativeLoss

calls = {"n": 0}


def score(model, tokenizer):
    calls["n"] += 1
    if calls["n"] == int(os.environ.get("SWARM_TEST_INTERRUPT_AT", "0")):
        raise KeyboardInterrupt  # what Ctrl-C does in the middle of an evaluation
    return NegativeLoss(load_examples(Path(os.environ["SWARM_TEST_DEV"])), batch_size=16)(model, tokenizer)
"""


def test_interrupted_run_is_kept_and_resumed_only_when_asked(zoo, recipe_factory, tmp_path, monkeypatch):
    (tmp_path / "interruptible.py").write_text(INTERRUPTIBLE)
    monkeypatch.setenv("SWARM_TEST_DEV", str(zoo.dev))
    utility = {"type": "python", "function": str(tmp_path / "interruptible.py") + ":score"}
    recipe = load_recipe(recipe_factory("lora", utility=utility, swarm={"max_iterations": 3}))
    reference = run_swarm(recipe, tmp_path / "reference", QUIET)

    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    monkeypatch.setenv("SWARM_TEST_INTERRUPT_AT", "6")  # iteration 1, after the first checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_swarm(recipe, out, QUIET)
    monkeypatch.delenv("SWARM_TEST_INTERRUPT_AT")
    assert (partial / "swarm_state.json").exists() and not out.exists()
    with pytest.raises(OutputError, match="an interrupted run exists .* --resume .* --overwrite"):
        run_swarm(recipe, out, QUIET)
    other = load_recipe(
        recipe_factory("lora", utility=utility, swarm={"max_iterations": 3, "seed": 8}, folder=tmp_path / "other")
    )
    with pytest.raises(OutputError, match="started from a different recipe or different experts"):
        run_swarm(other, out, RunOptions(quiet=True, resume=True))
    resumed = run_swarm(recipe, out, RunOptions(quiet=True, resume=True))
    assert resumed.coefficients == reference.coefficients and resumed.winner_dev == reference.winner_dev
    assert evaluations(out) == evaluations(tmp_path / "reference")


def test_unreadable_checkpoint_is_never_discarded_silently(recipe_factory, tmp_path):
    recipe = load_recipe(recipe_factory("lora"))
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "swarm_history.jsonl").write_text('{"iteration": 0}\n' * 100)
    (partial / "swarm_state.json").write_text('{"format": 99}')
    for options in (QUIET, RunOptions(quiet=True, resume=True)):
        with pytest.raises(OutputError, match="written by another version of mergekit-swarm .* pass --overwrite to discard"):
            run_swarm(recipe, tmp_path / "out", options)
    assert len((partial / "swarm_history.jsonl").read_text().splitlines()) == 100
    run_swarm(recipe, tmp_path / "out", RunOptions(quiet=True, overwrite=True))
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_a_partial_folder_without_checkpoint_does_not_block_the_next_run(recipe_factory, tmp_path):
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "swarm_history.jsonl").write_text("")  # e.g. the model failed to load last time
    with pytest.raises(OutputError, match="is in the way and is not an interrupted run of mergekit-swarm"):
        run_swarm(load_recipe(recipe_factory("lora")), tmp_path / "out", QUIET)  # without our marker: not ours
    assert (partial / "swarm_history.jsonl").exists()
    (partial / OUTPUT_MARKER).write_text("{}")  # what a run writes first into its partial folder
    run_swarm(load_recipe(recipe_factory("lora")), tmp_path / "out", QUIET)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


FLAKY = """
import math
calls = {"n": 0}

def score(model, tokenizer):
    calls["n"] += 1
    if calls["n"] % 3 == 0:
        raise RuntimeError("flaky objective")
    return -sum(float(p.detach().double().pow(2).mean()) for p in model.parameters()) / 1e3

def always_fails(model, tokenizer):
    return math.nan
"""


def test_failed_evaluations_are_counted_and_the_search_goes_on(recipe_factory, tmp_path):
    (tmp_path / "flaky.py").write_text(FLAKY)
    utility = {"type": "python", "function": str(tmp_path / "flaky.py") + ":score"}
    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_factory("lora", utility=utility)), out, QUIET)
    rows = history(out)
    failed = [r for r in rows if "error" in r]
    assert result.failed == len(failed) == len(rows) // 3
    assert all(r["utility"] is None and r["error"] == "RuntimeError: flaky objective" for r in failed)
    assert "failed" in (out / "README.md").read_text()

    with pytest.raises(UtilityError, match="utility failed on particle 2 at iteration 0: RuntimeError: flaky objective"):
        run_swarm(load_recipe(recipe_factory("lora", utility=utility)), tmp_path / "ff", RunOptions(quiet=True, fail_fast=True))
    partial = tmp_path / ".ff.partial"
    assert not (partial / "swarm_state.json").exists()  # stopped inside iteration 0: nothing checkpointed
    assert len(history(partial)) == 2  # the two evaluations before the failure


def test_a_utility_failing_on_every_expert_stops_with_its_error(recipe_factory, tmp_path):
    (tmp_path / "flaky.py").write_text(FLAKY)
    utility = {"type": "python", "function": str(tmp_path / "flaky.py") + ":always_fails"}
    with pytest.raises(
        UtilityError, match="failed on all 4 evaluated particles of iteration 0; first error: ValueError: utility returned nan"
    ):
        run_swarm(load_recipe(recipe_factory("lora", utility=utility)), tmp_path / "out", QUIET)
    assert not (tmp_path / ".out.partial" / "swarm_state.json").exists()


def test_evaluation_dropout_reuses_last_utilities_and_saves_evaluations(recipe_factory, tmp_path):
    recipe = load_recipe(recipe_factory("lora", swarm={"max_iterations": 3, "drop_k": 1, "drop_n": 2}))
    result = run_swarm(recipe, tmp_path / "out", QUIET)
    rows = history(tmp_path / "out")
    skipped = [r for r in rows if r.get("skipped")]
    assert len(skipped) == 3 * 2 and all(r["iteration"] > 0 for r in skipped)  # 2 of 4 particles, iterations 1-3
    last = {}
    for row in rows:
        if row.get("skipped"):
            assert row["utility"] == last[row["particle"]]  # the particle's last utility, reused
        last[row["particle"]] = row["utility"]
    assert result.evaluations == 4 * 4 - 6
    again = run_swarm(recipe, tmp_path / "again", QUIET)
    assert again.coefficients == result.coefficients and evaluations(tmp_path / "again") == evaluations(tmp_path / "out")


def test_dropout_runs_resume_exactly(zoo, recipe_factory, tmp_path, monkeypatch):
    (tmp_path / "interruptible.py").write_text(INTERRUPTIBLE)
    monkeypatch.setenv("SWARM_TEST_DEV", str(zoo.dev))
    utility = {"type": "python", "function": str(tmp_path / "interruptible.py") + ":score"}
    recipe = load_recipe(recipe_factory("lora", utility=utility, swarm={"max_iterations": 4, "drop_k": 1, "drop_n": 2}))
    reference = run_swarm(recipe, tmp_path / "reference", QUIET)
    monkeypatch.setenv("SWARM_TEST_INTERRUPT_AT", "7")  # inside iteration 2 (iterations 1+ evaluate 2 of 4)
    with pytest.raises(KeyboardInterrupt):
        run_swarm(recipe, tmp_path / "out", QUIET)
    monkeypatch.delenv("SWARM_TEST_INTERRUPT_AT")
    resumed = run_swarm(recipe, tmp_path / "out", RunOptions(quiet=True, resume=True))
    assert resumed.coefficients == reference.coefficients
    assert evaluations(tmp_path / "out") == evaluations(tmp_path / "reference")


def test_initial_merges_run_evaluates_each_particle_once_per_iteration(recipe_factory, tmp_path):
    out = tmp_path / "out"
    recipe = recipe_factory("lora", swarm={"particles": 6, "max_iterations": 2, "initial": "merges"})
    result = run_swarm(load_recipe(recipe), out, RunOptions(quiet=True))
    lines = [json.loads(line) for line in (out / "swarm_history.jsonl").read_text().splitlines()]
    first = [line for line in lines if line["iteration"] == 0]
    assert [line["particle"] for line in first] == list(range(6))  # experts, merges, crossovers: once each
    assert result.evaluations == len(lines) == 6 * (result.iterations + 1)
    assert result.expert_dev == [line["utility"] for line in first[:3]]


def test_probes_after_each_stalled_iteration_are_counted_in_the_result_and_the_card(zoo, recipe_factory, tmp_path):
    out = tmp_path / "out"
    recipe = recipe_factory(
        "lora",
        swarm={"particles": 6, "max_iterations": 4, "patience": 10, "stall_probes": 0.5},
        utility={"type": "exact_match", "dev": str(zoo.dev), "test": str(zoo.test), "max_new_tokens": 4},  # plateaus
    )
    result = run_swarm(load_recipe(recipe), out, RunOptions(quiet=True))
    best, stalled = -np.inf, 0
    for iteration in range(result.iterations):  # the last evaluated iteration is followed by no move
        top = max(row["utility"] for row in history(out) if row["iteration"] == iteration)
        stalled += top <= best
        best = max(best, top)
    assert stalled > 0, "the scenario must stall at least once"
    assert result.probes == 3 * stalled
    assert json.loads((out / "swarm_result.json").read_text())["probes"] == result.probes
    card = (out / "README.md").read_text()
    assert (f", {result.probes} probes near the global best;" in card) == (result.probes > 0)
