"""The `mergekit-swarm` command: default command, mergekit options, errors, progress."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mergekit_swarm.cli import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_recipe_as_first_argument_runs_and_prints_the_summary(runner, recipe_factory, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(main, [str(recipe_factory("lora")), str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "swarm_result.json").read_text())
    assert "swarm winner" in result.stdout and f"{summary['winner_dev']:.4f}" in result.stdout
    assert "model swarms" in result.stderr and "best=" in result.stderr  # the progress bar
    assert "it/s" in result.stderr or "s/it" in result.stderr


def test_mergekit_options_are_accepted_with_their_meaning(runner, recipe_factory, tmp_path):
    out = tmp_path / "out"
    args = [
        "run",
        str(recipe_factory("full")),
        str(out),
        "--quiet",
        "--out-shard-size",
        "80K",
        "--no-copy-tokenizer",
        "--device",
        "cpu",
        "--random-seed",
        "3",
        "--lazy-unpickle",
        "--no-write-model-card",
        "-j",
        "2",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "model swarms" not in result.stderr  # --quiet
    assert (out / "model.safetensors.index.json").exists()  # --out-shard-size
    assert not (out / "tokenizer.json").exists() and not (out / "README.md").exists()


def test_options_without_effect_are_named(runner, recipe_factory, tmp_path):
    result = runner.invoke(main, [str(recipe_factory("lora")), str(tmp_path / "out"), "--allow-crimes", "--lazy-unpickle"])
    assert result.exit_code == 0, result.output
    assert "note: --allow-crimes has no effect here (experts must align tensor by tensor anyway)" in result.stderr
    assert "note: --lazy-unpickle has no effect here (pickles are read with torch.load(weights_only=True)" in result.stderr


def test_errors_are_one_line_with_a_non_zero_exit(runner, recipe_factory, tmp_path):
    recipe = recipe_factory("lora", swarm={"inertai": 0.1})
    result = runner.invoke(main, [str(recipe), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {recipe}: swarm: unknown key 'inertai' in swarm (did you mean 'inertia'?)"
    ]
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()

    missing = runner.invoke(main, [str(tmp_path / "nope.yml"), str(tmp_path / "out")])
    assert missing.exit_code == 1 and missing.stderr == f"error: recipe {tmp_path / 'nope.yml'} does not exist\n"


def test_merge_lora_on_full_models_is_refused_before_any_work(runner, recipe_factory, tmp_path):
    result = runner.invoke(main, [str(recipe_factory("full")), str(tmp_path / "out"), "--merge-lora"])
    assert result.exit_code == 1 and "--merge-lora applies to LoRA experts only" in result.stderr
    assert not (tmp_path / ".out.partial").exists()


def test_lora_pool_without_base_model_is_refused(runner, zoo, tmp_path):
    from tests.helpers import write_recipe

    recipe = write_recipe(tmp_path / "r", zoo.lora, utility={"type": "nll", "dev": str(zoo.dev)})
    result = runner.invoke(main, [str(recipe), str(tmp_path / "out")])
    assert result.exit_code == 1 and "base_model: is required when the experts are LoRA adapters" in result.stderr


def test_help_lists_swarm_and_mergekit_options(runner):
    result = runner.invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for flag in (
        "--resume",
        "--overwrite",
        "--fail-fast",
        "--merge-lora",
        "--out-shard-size",
        "--cuda",
        "--allow-crimes",
        "--trust-remote-code",
        "--copy-tokenizer",
        "--quiet",
    ):
        assert flag in result.output
