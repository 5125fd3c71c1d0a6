"""`mergekit-swarm compare` on the tiny zoo: leaderboard contents, budgets, and agreement with a plain run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mergekit.config import MergeConfiguration

from mergekit_swarm.cli import main
from mergekit_swarm.compare import BASELINES, SEARCH_BASELINES, CompareOptions, Leaderboard, run_comparison
from mergekit_swarm.config import load_recipe
from mergekit_swarm.options import RunOptions
from mergekit_swarm.run import run_swarm
from tests.conftest import write_recipe

BUDGET = 7


@pytest.fixture(scope="module")
def lora_board(zoo, tmp_path_factory):
    """One comparison over the zoo's LoRA experts with every method, and its recipe."""
    root = tmp_path_factory.mktemp("compare")
    utility = {"type": "nll", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 16}
    swarm = {"particles": 4, "max_iterations": 2}
    recipe = write_recipe(root / "recipe", zoo.lora, base=zoo.base, utility=utility, swarm=swarm, dtype="float32")
    out = root / "board"
    args = ["compare", str(recipe), str(out), "--search", "all", "--budget", str(BUDGET), "--granularities", "model,tensor"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return recipe, out, result.output


def test_every_method_has_a_row_ranked_by_dev(lora_board):
    _, out, printed = lora_board
    board = Leaderboard.read(out)
    methods = [e.method for e in board.entries]
    assert methods == [*BASELINES, "swarm_model", "swarm_tensor", *SEARCH_BASELINES]
    assert all(e.dev is not None and e.test is not None for e in board.entries), board.entries
    ranked = [e.dev for e in board.ranked()]
    assert ranked == sorted(ranked, reverse=True)
    assert board.budget == BUDGET and board.kind == "lora" and board.utility == "nll"
    for name in ("leaderboard.md", "leaderboard.png", "README.md", "swarm.yml"):
        assert (out / name).stat().st_size > 0, name
    assert "LoraHub" in (out / "leaderboard.md").read_text() and "LoraHub" in printed
    assert "## Leaderboard" in (out / "README.md").read_text()
    assert not (out / "lora-merge-cache").exists()  # scratch, not output


def test_search_baselines_use_exactly_the_budget(lora_board):
    board = Leaderboard.read(lora_board[1])
    assert [board.entry(m).evaluations for m in SEARCH_BASELINES] == [BUDGET] * 3


def test_best_expert_and_swarm_agree_with_a_plain_run(lora_board, tmp_path):
    recipe, out, _ = lora_board
    board = Leaderboard.read(out)
    result = run_swarm(load_recipe(recipe), tmp_path / "run", RunOptions(quiet=True))
    assert board.entry("best_expert").dev == max(result.expert_dev)
    assert board.entry("best_expert").settings["expert"] == result.experts[int(np.argmax(result.expert_dev))]
    swarm = board.entry("swarm_model")
    assert swarm.dev == result.winner_dev and swarm.test == result.winner_test
    assert swarm.evaluations == result.evaluations
    assert _utilities(out / "swarm_model" / "swarm_history.jsonl") == _utilities(tmp_path / "run" / "swarm_history.jsonl")
    # one way to write a winner's recipe: the comparison's row is the run's mergekit_config.yml (dtypes as written)
    row = yaml.safe_load((out / swarm.recipe).read_text())
    assert row == yaml.safe_load((tmp_path / "run" / "mergekit_config.yml").read_text()) and "out_dtype" not in row


def _utilities(history) -> list[tuple]:
    return [(r["iteration"], r["particle"], r["utility"]) for r in map(json.loads, history.read_text().splitlines())]


def test_recipes_reproduce_the_choices(lora_board):
    _, out, _ = lora_board
    board = Leaderboard.read(out)
    soup = yaml.safe_load((out / board.entry("uniform_soup").recipe).read_text())
    assert soup["merge_method"] == "model_swarms" and [m["parameters"]["weight"] for m in soup["models"]] == [1 / 3] * 3
    ties = board.entry("ties")
    config = MergeConfiguration.model_validate(yaml.safe_load((out / ties.recipe).read_text()))
    assert config.merge_method == "ties" and all("+" in str(m.model) for m in config.models)  # base+adapter
    assert config.parameters["lambda"] == ties.settings["lambda"]
    greedy = board.entry("greedy_soup")
    assert greedy.dev >= board.entry("best_expert").dev
    assert greedy.evaluations == 3 + 2  # the experts, then one try per other expert


def test_full_pool_without_base_skips_task_vector_methods(zoo, tmp_path):
    utility = {"type": "nll", "dev": str(zoo.dev), "batch_size": 16}
    recipe = write_recipe(tmp_path / "recipe", zoo.full, utility=utility)
    out = tmp_path / "board"
    result = CliRunner().invoke(main, ["compare", str(recipe), str(out), "--granularities", "", "--quiet"])
    assert result.exit_code == 0, result.output
    board = Leaderboard.read(out)
    for method in ("task_arithmetic", "ties", "dare_ties", "model_stock"):
        entry = board.entry(method)
        assert entry.dev is None and "needs base_model" in entry.note and entry.evaluations == 0
    slerp = board.entry("slerp")
    assert slerp.dev is not None and slerp.test is None and slerp.evaluations == 3 + 3
    assert json.loads((out / "leaderboard.json").read_text())["kind"] == "full"


def test_unknown_method_is_a_one_line_error_and_writes_nothing(recipe_factory, tmp_path):
    out = tmp_path / "board"
    result = CliRunner().invoke(main, ["compare", str(recipe_factory()), str(out), "--search", "hill_climb"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: unknown search baseline 'hill_climb'; choose from random_search, lorahub, cma_es"
    ]
    assert not out.exists()


def test_search_baselines_repeat_exactly_with_the_same_seed(lora_board, tmp_path):
    recipe = load_recipe(lora_board[0])
    settings = CompareOptions(baselines=(), search=SEARCH_BASELINES, granularities=(), budget=5, seed=3)
    boards = [run_comparison(recipe, tmp_path / f"board{i}", RunOptions(quiet=True), settings) for i in range(2)]
    for method in SEARCH_BASELINES:
        first, second = (b.entry(method) for b in boards)
        assert (first.dev, first.test, first.evaluations) == (second.dev, second.test, 5)
        recipe_file = f"recipes/{method}.yml"
        assert (tmp_path / "board0" / recipe_file).read_text() == (tmp_path / "board1" / recipe_file).read_text()


def test_an_interrupted_comparison_leaves_nothing_behind(zoo, tmp_path):
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "objective.py").write_text("def utility(model, tokenizer):\n    raise KeyboardInterrupt\n")
    recipe = write_recipe(
        tmp_path / "recipe", zoo.lora, base=zoo.base, utility={"type": "python", "function": "objective.py:utility"}
    )
    out = tmp_path / "board"
    with pytest.raises(KeyboardInterrupt):
        run_comparison(load_recipe(recipe), out, RunOptions(quiet=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe"]  # neither board/ nor .board.partial/
