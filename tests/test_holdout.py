"""`swarm.holdout`: part of dev hidden from the search, the winner chosen among the best personal bests on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergekit_swarm import pso
from mergekit_swarm.commands.rescore import score_folder
from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.search.selection import _best_personal_bests
from mergekit_swarm.utilities.base import dev_part
from mergekit_swarm.utilities.data import load_examples

QUIET = RunOptions(quiet=True)
HOLDOUT = {"holdout": 0.25, "holdout_candidates": 3, "particles": 6, "max_iterations": 3}


def test_dev_is_cut_in_two_fixed_parts(zoo):
    examples = load_examples(zoo.dev)
    search, held = (dev_part(examples, 0.25, part, zoo.dev) for part in ("search", "holdout"))
    assert len(held) == round(0.25 * len(examples)) and len(search) == len(examples) - len(held)
    assert sorted(map(repr, search + held)) == sorted(map(repr, examples))  # a partition, in file order
    assert [e for e in examples if e in search] == search
    assert dev_part(examples, 0.25, "holdout", zoo.dev) == held  # the data decides, not the run
    with pytest.raises(ConfigError, match=f"{zoo.dev}: holding out 0.01 of its {len(examples)} examples leaves an empty part"):
        dev_part(examples, 0.01, "holdout", zoo.dev)


def test_a_utility_that_cannot_be_cut_is_refused(recipe_factory, tmp_path):
    (tmp_path / "objective.py").write_text("def utility(model, tokenizer):\n    return 0.0\n")
    utility = {"type": "python", "function": str(tmp_path / "objective.py") + ":utility"}
    with pytest.raises(ConfigError, match="swarm: holdout needs a utility whose dev data is a file of examples; 'python'"):
        load_recipe(recipe_factory("lora", utility=utility, swarm={"holdout": 0.25}))


@pytest.fixture(scope="module", params=["factor", "update"])
def holdout_run(zoo, tmp_path_factory, request):
    """A holdout run of the LoRA pool in each space."""
    from tests.helpers import write_recipe

    root = tmp_path_factory.mktemp("holdout")
    utility = {"type": "nll", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 16}
    swarm = {**HOLDOUT, "lora_space": request.param}
    recipe = load_recipe(write_recipe(root / "recipe", zoo.lora, base=zoo.base, utility=utility, swarm=swarm))
    return recipe, run_swarm(recipe, root / "out", QUIET), root / "out"


def test_the_winner_is_the_best_candidate_on_the_held_out_examples(holdout_run):
    recipe, result, out = holdout_run
    selection = result.selection
    candidates = selection["candidates"]
    assert len(candidates) == 3
    searched = [c["search"] for c in candidates]
    assert searched == sorted(searched, reverse=True)  # the best personal bests, global best first
    history = [json.loads(line) for line in (out / "swarm_history.jsonl").read_text().splitlines()]
    assert searched[0] == max(h["utility"] for h in history)  # the search only saw the searched part
    held = [c["holdout"] for c in candidates]
    assert selection["chosen"] == held.index(max(held))
    assert selection["winner_search_dev"] == searched[selection["chosen"]]
    # dev in the result is over all of dev: the written winner, loaded as a user loads it, scores it
    assert score_folder(recipe.resolve(), out, "dev").value == result.winner_dev
    assert result.evaluations == len(history) + 3
    card = (out / "README.md").read_text()
    assert "The search saw 75% of the dev examples" in card and "**winner**" in card


def test_a_holdout_run_repeats_exactly(holdout_run, tmp_path):
    recipe, result, _ = holdout_run
    again = run_swarm(recipe, tmp_path / "again", QUIET)
    assert again.coefficients == result.coefficients and again.selection == result.selection


def test_without_holdout_the_global_best_wins(recipe_factory, tmp_path):
    result = run_swarm(load_recipe(recipe_factory("lora")), tmp_path / "out", QUIET)
    history = [json.loads(line) for line in (tmp_path / "out" / "swarm_history.jsonl").read_text().splitlines()]
    assert result.selection is None and result.winner_dev == max(h["utility"] for h in history)


def test_compare_reports_the_holdout_swarm_like_a_run(holdout_run, tmp_path):
    from mergekit_swarm.commands.compare import CompareOptions, run_comparison

    recipe, result, _ = holdout_run
    board = run_comparison(
        recipe, tmp_path / "board", QUIET, CompareOptions(baselines=("best_expert",), granularities=("model",))
    )
    swarm = board.entry("swarm_model")
    assert (swarm.dev, swarm.test, swarm.evaluations) == (result.winner_dev, result.winner_test, result.evaluations)
    assert swarm.settings["holdout"] == 0.25
    assert board.entry("best_expert").dev == max(result.expert_dev)  # every other method sees all of dev


def test_the_global_best_comes_first_among_tied_personal_bests():
    """A particle that later only tied the global best's search utility must not pass it."""
    state = pso.initialize(pso.SwarmSettings(particles=4, initial="experts"), 4, 1)
    state.best_utilities[:] = [0.5, 0.7, 0.2, 0.7]
    state.best_positions[3] = np.full((1, 4), 0.25)  # distinct from particle 1's
    state.global_best_particle = 3  # reached 0.7 first
    assert _best_personal_bests(state, 3) == [3, 1, 0]
