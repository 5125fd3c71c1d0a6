"""The output folder: `--overwrite` replaces only our own earlier output, never the user's files.

Tried as a user would, through the CLI: the output folder set to the recipe's own folder, an
expert's folder, a folder of unrelated files, each with `--overwrite`, is refused in one line with
every file intact; an earlier output is replaced. `apply` and `compare` follow the same rules.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mergekit_swarm.cli import main
from mergekit_swarm.core.names import OUTPUT_MARKER
from tests.helpers import write_recipe


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(zoo, tmp_path) -> Path:
    """A user's project folder: the recipe, its data beside it, and two LoRA experts copied in."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    shutil.copyfile(zoo.dev, root / "data" / "dev.jsonl")
    for expert in zoo.lora[:2]:
        shutil.copytree(expert, root / "experts" / expert.name)
    utility = {"type": "nll", "dev": "data/dev.jsonl", "batch_size": 16}
    write_recipe(root, [f"experts/{e.name}" for e in zoo.lora[:2]], base=zoo.base, utility=utility, swarm={"max_iterations": 1})
    (root / "notes.txt").write_text("the user's own notes")
    return root


def run(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("where", ["recipe folder", "expert folder", "inside an expert", "unrelated folder"])
def test_overwrite_never_touches_a_folder_that_is_not_our_output(project, tmp_path, where):
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    out = {
        "recipe folder": project,
        "expert folder": project / "experts" / "reverse",
        "inside an expert": project / "experts" / "reverse" / "merged",
        "unrelated folder": unrelated,
    }[where]
    before = {folder: snapshot(folder) for folder in (project, unrelated)}
    result = run([project / "swarm.yml", out, "--overwrite"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0], result.stderr
    expected = "is not an output of mergekit-swarm" if where == "unrelated folder" else "an input of the recipe"
    assert expected in lines[0]
    assert {folder: snapshot(folder) for folder in (project, unrelated)} == before  # every file intact
    assert not list(out.parent.glob(".*.partial"))


def test_overwrite_replaces_an_earlier_output_only_once_the_new_one_is_complete(project, tmp_path):
    out = tmp_path / "out"
    first = run([project / "swarm.yml", out, "--quiet"])
    assert first.exit_code == 0, first.output
    assert (out / OUTPUT_MARKER).is_file()
    (out / "stale.txt").write_text("left by the earlier output")  # part of the output folder being replaced
    again = run([project / "swarm.yml", out, "--overwrite", "--quiet"])
    assert again.exit_code == 0, again.output
    assert (out / "adapter_model.safetensors").exists() and not (out / "stale.txt").exists()
    assert (project / "notes.txt").read_text() == "the user's own notes"


def test_apply_and_compare_follow_the_same_rules(project, tmp_path):
    out = tmp_path / "out"
    assert run([project / "swarm.yml", out, "--quiet"]).exit_code == 0
    weights = tmp_path / "weights.yml"
    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    weights.write_text(yaml.safe_dump(recipe))
    before = snapshot(project)
    for command in (["apply", weights], ["compare", project / "swarm.yml", "--baselines", "best_expert"]):
        refused = run([*command, project / "experts", "--overwrite", "--quiet"])  # holds the experts
        assert refused.exit_code == 1 and "an input of the recipe" in refused.stderr, refused.output
        refused = run([*command, tmp_path, "--overwrite", "--quiet"])  # holds the recipe, data and earlier output
        assert refused.exit_code == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.output
        written = run([*command, tmp_path / command[0], "--quiet"])
        assert written.exit_code == 0, written.output
        assert (tmp_path / command[0] / OUTPUT_MARKER).is_file()
        replaced = run([*command, tmp_path / command[0], "--overwrite", "--quiet"])
        assert replaced.exit_code == 0, replaced.output
    assert snapshot(project) == before
