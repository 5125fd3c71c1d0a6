"""`mergekit-swarm compare` on the tiny zoo: leaderboard contents, budgets, and agreement with a plain run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mergekit.config import MergeConfiguration
from mergekit.scripts.run_yaml import main as mergekit_yaml

from mergekit_swarm.cli import main
from mergekit_swarm.commands.compare import BASELINES, SEARCH_BASELINES, CompareOptions, Leaderboard, run_comparison
from mergekit_swarm.commands.compare.curves import Trace
from mergekit_swarm.commands.rescore import score_folder
from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.output.emergence import emergence
from tests.helpers import write_recipe

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


@pytest.fixture(scope="module")
def exact_match_board(zoo, tmp_path_factory):
    """A comparison on exact match (each example right or wrong), with a 2x longer swarm and random search."""
    root = tmp_path_factory.mktemp("compare-em")
    utility = {"type": "exact_match", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 8, "max_new_tokens": 6}
    swarm = {"particles": 4, "max_iterations": 2, "patience": 2}
    recipe = write_recipe(root / "recipe", zoo.lora, base=zoo.base, utility=utility, swarm=swarm, dtype="float32")
    out = root / "board"
    baselines = "best_expert,uniform_soup"
    args = [
        "compare",
        str(recipe),
        str(out),
        "--baselines",
        baselines,
        "--search",
        "random-search",
        "--long-swarm",
        "2",
        "--quiet",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return recipe, out


def test_trace_keeps_improvements_and_tests_evenly_spaced_incumbents():
    trace = Trace()
    for k, utility in enumerate([0.1, 0.3, 0.2, float("nan"), 0.3, 0.5, 0.4, 0.4, 0.6, 0.1, 0.1, 0.1]):
        trace.offer(f"c{k}", utility)
    assert [(used, dev) for used, dev, _ in trace.improvements] == [(1, 0.1), (2, 0.3), (6, 0.5), (9, 0.6)]
    assert trace.tested(points=4) == [1, 2, 3]  # incumbents after 3, 6, 9 and 12 evaluations (the last two agree)
    curve = trace.curve(lambda candidates: [float(c[1:]) for c in candidates])
    assert curve == [
        {"evaluations": 1, "dev": 0.1, "test": None},
        {"evaluations": 2, "dev": 0.3, "test": 1.0},
        {"evaluations": 6, "dev": 0.5, "test": 5.0},
        {"evaluations": 9, "dev": 0.6, "test": 8.0},
    ]
    assert all(p["test"] is None for p in trace.curve(None))


def test_budget_curves_of_a_comparison(exact_match_board):
    _, out = exact_match_board
    board = Leaderboard.read(out)
    assert [e.method for e in board.entries] == ["best_expert", "uniform_soup", "swarm_model", "swarm_model_x2", "random_search"]
    for entry in board.entries:
        if entry.family == "baseline":
            assert entry.curve == []
            continue
        evaluations, devs = [p["evaluations"] for p in entry.curve], [p["dev"] for p in entry.curve]
        assert evaluations[0] == 1 and evaluations == sorted(set(evaluations)) and evaluations[-1] <= entry.evaluations
        assert devs == sorted(set(devs)) and devs[-1] == entry.dev  # the final incumbent is the method's choice
        assert entry.curve[-1]["test"] == entry.test
        assert 1 <= sum(p["test"] is not None for p in entry.curve) <= 6
    short, long = board.entry("swarm_model"), board.entry("swarm_model_x2")
    assert long.settings["iterations"] > short.settings["iterations"] and long.evaluations > short.evaluations
    assert long.dev >= short.dev  # the same seed: the longer run continues the shorter one
    assert board.entry("random_search").evaluations == short.evaluations
    assert (out / "budget_curves.png").stat().st_size > 0 and "budget_curves.png" in (out / "README.md").read_text()


def test_comparison_reports_emergence_against_the_experts(exact_match_board):
    _, out = exact_match_board
    board = Leaderboard.read(out)
    examples = json.loads((out / "test_examples.json").read_text())
    experts = list(examples["experts"].values())
    assert list(examples["experts"]) == board.experts and len(experts[0][""]) == 9
    for entry in board.entries:
        counts = emergence(experts, examples["methods"][entry.method])
        assert entry.emergence == counts and counts["winner_solves"] / 9 == entry.test
    best = board.entry("best_expert").emergence
    assert best["new"] == 0 and best["lost"] == best["experts_solve"] - best["winner_solves"]  # an expert adds nothing
    assert "test: new / lost" in (out / "leaderboard.md").read_text()


def test_every_recipe_reproduces_its_row(lora_board, tmp_path):
    """Each recipes/<method>.yml, run as its header says (mergekit-yaml or mergekit-swarm apply) and
    loaded as a user loads it, scores its leaderboard row's dev utility exactly (NLL: any weight
    that differs shows)."""
    recipe_file, out, _ = lora_board
    recipe = load_recipe(recipe_file).resolve()
    board = Leaderboard.read(out)
    assert all(e.recipe for e in board.entries)
    for entry in board.entries:
        path, merged = out / entry.recipe, tmp_path / entry.method
        command = path.read_text().splitlines()[0].split("`")[1].split()  # "# title: `command` reproduces it"
        program, args = (command[0], command[1:]) if command[0] == "mergekit-yaml" else (command[:2], command[2:])
        assert args[:2] == [entry.recipe, "out/"], command
        if program == "mergekit-yaml":
            cache = ["--lora-merge-cache", str(tmp_path / "lora-cache")]
            result = CliRunner().invoke(mergekit_yaml, [str(path), str(merged), *args[2:], *cache])
        else:
            assert program == ["mergekit-swarm", "apply"] and args[2:] == [], command
            result = CliRunner().invoke(main, ["apply", str(path), str(merged), "--quiet"])
        assert result.exit_code == 0, (entry.method, result.output)
        assert score_folder(recipe, merged, "dev").value == entry.dev, entry.method


def test_an_update_space_comparison_tags_its_mixes_and_stock_mergekit_reproduces_them(zoo, tmp_path):
    """Soups, swarm and search baselines mix the adapters in the recipe's space, and say so; their
    recipes are stock `linear`s of the baked experts, which mergekit-yaml runs (NLL to float rounding)."""
    utility = {"type": "nll", "dev": str(zoo.dev), "batch_size": 16}
    swarm = {"particles": 4, "max_iterations": 1, "lora_space": "update"}
    recipe_file = write_recipe(tmp_path / "recipe", zoo.lora, base=zoo.base, utility=utility, swarm=swarm, dtype="float32")
    out = tmp_path / "board"
    args = ["compare", str(recipe_file), str(out), "--baselines", "best_expert,uniform_soup", "--search", "random-search"]
    result = CliRunner().invoke(main, [*args, "--budget", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    board = Leaderboard.read(out)
    titles = {e.method: e.title for e in board.entries}
    assert titles["best_expert"] == "best single expert"  # an expert as it is: no space
    for method in ("uniform_soup", "swarm_model", "random_search"):
        assert titles[method].endswith("update space") and board.entry(method).settings["lora_space"] == "update"
        path = out / board.entry(method).recipe
        assert "`mergekit-yaml" in path.read_text().splitlines()[0]
        merged = tmp_path / method
        cache = ["--lora-merge-cache", str(tmp_path / "lora-cache")]
        assert CliRunner().invoke(mergekit_yaml, [str(path), str(merged), *cache]).exit_code == 0
        reproduced = score_folder(load_recipe(recipe_file).resolve(), merged, "dev").value
        assert reproduced == pytest.approx(board.entry(method).dev, abs=1e-4), method
