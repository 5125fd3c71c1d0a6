"""Correctness emergence: which examples the winner solves that no expert solved, and the reverse."""

from __future__ import annotations

import json

from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.output.emergence import emergence, sentence


def test_counts_on_a_constructed_case():
    experts = [{"": (1, 0, 0, 1, 0)}, {"": (0, 1, 0, 1, 0)}]
    winner = {"": (1, 0, 1, 0, 0)}  # keeps example 0, loses 1 and 3, solves 2 that no expert solved
    assert emergence(experts, winner) == {"examples": 5, "experts_solve": 3, "winner_solves": 2, "new": 1, "lost": 2}
    assert sentence({"test": emergence(experts, winner)}) == (
        "On test, the winner solves 1 of 5 examples that no expert solves, and misses 2 that some expert solves."
    )
    components = [{"a": (1, 0), "b": (0,)}, {"a": (0, 0), "b": (1,)}]  # a multitask objective: all components' examples
    assert emergence(components, {"a": (1, 1), "b": (0,)})["new"] == 1
    assert emergence(experts, {"": (0.5, 0, 0, 1, 0)}) is None  # not right/wrong (a reward): nothing to say
    assert emergence([], {}) is None


def test_a_run_records_which_examples_each_model_gets_right(recipe_factory, tmp_path, zoo):
    utility = {"type": "exact_match", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 8, "max_new_tokens": 6}
    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_factory("lora", utility=utility)), out, RunOptions(quiet=True))
    examples = json.loads((out / "swarm_examples.json").read_text())
    for split, rows in (("dev", 12), ("test", 9)):
        winner = examples[split]["winner"][""]
        assert len(winner) == rows and set(winner) <= {0.0, 1.0}
        assert list(examples[split]["experts"]) == result.experts
        expected = emergence(list(examples[split]["experts"].values()), examples[split]["winner"])
        assert result.emergence[split] == expected
    assert sum(examples["test"]["winner"][""]) / 9 == result.winner_test  # the same evaluation as the report
    assert sum(examples["dev"]["winner"][""]) / 12 == result.winner_dev
    assert "examples that no expert solves" in (out / "README.md").read_text()
    nll = run_swarm(load_recipe(recipe_factory("lora", folder=tmp_path / "nll")), tmp_path / "nll-out", RunOptions(quiet=True))
    assert nll.emergence == {} and not (tmp_path / "nll-out" / "swarm_examples.json").exists()
