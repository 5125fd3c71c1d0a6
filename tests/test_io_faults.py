"""Storage faults: disk full, permission denied and read-only file systems while writing.

Each gives one line naming the path and a non-zero exit, leaves no output folder and nothing
half-written, and a search interrupted that way resumes with `--resume` to the same winner.
Faults are made for real on a small tmpfs where the test may mount one (root), and by
making the writers fail in-process everywhere else.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from click.testing import CliRunner

from mergekit_swarm.cli import main
from mergekit_swarm.commands.apply import apply_recipe
from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core import storage
from mergekit_swarm.core.errors import OutputError
from mergekit_swarm.core.names import HISTORY_FILE, OUTPUT_MARKER, STATE_FILE
from mergekit_swarm.core.run_options import RunOptions

QUIET = RunOptions(quiet=True)
SWARM = {"particles": 4, "max_iterations": 3, "patience": 5, "seed": 11}


@pytest.fixture(scope="module")
def reference(zoo, tmp_path_factory):
    """The same searches, uninterrupted: what every resumed run must reproduce."""
    from tests.helpers import write_recipe

    root = tmp_path_factory.mktemp("reference")
    results = {}
    for kind in ("full", "lora"):
        experts = zoo.full if kind == "full" else zoo.lora
        utility = {"type": "nll", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 16}  # recipe_factory's
        recipe = write_recipe(root / kind, experts, base=zoo.base if kind == "lora" else None, swarm=SWARM, utility=utility)
        results[kind] = run_swarm(load_recipe(recipe), root / kind / "out", QUIET)
    return results


def _recipe(recipe_factory, kind: str, tmp_path):
    return recipe_factory(kind, swarm=SWARM, utility=None, folder=tmp_path / "recipe")


def _same_search(result, reference) -> None:
    assert result.coefficients == reference.coefficients
    assert result.winner_dev == reference.winner_dev and result.iterations == reference.iterations


def _no_space(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs: room for a search's state and history, not for the weights."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}); the in-process tests cover the messages")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_on_a_real_file_system_then_resume(recipe_factory, reference, small_disk, tmp_path, monkeypatch):
    recipe = _recipe(recipe_factory, "full", tmp_path)
    out = small_disk / "out"
    result = CliRunner().invoke(main, [str(recipe), str(out), "--quiet"])
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith(f"error: cannot write {small_disk}/.out.partial"), message
    assert "No space left on device" in message and "--resume" in message
    assert not out.exists()
    kept = sorted(p.name for p in (small_disk / ".out.partial").iterdir())
    assert kept == sorted([OUTPUT_MARKER, STATE_FILE, HISTORY_FILE])  # no torn weights

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # space freed
    _same_search(run_swarm(load_recipe(recipe), out, RunOptions(quiet=True, resume=True)), reference["full"])


def test_read_only_file_system_is_one_line(recipe_factory, small_disk, tmp_path):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = CliRunner().invoke(main, [str(recipe_factory("lora", folder=tmp_path / "recipe")), str(small_disk / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot write {small_disk}/.out.partial: Read-only file system"


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_disk_full_while_writing_the_weights_keeps_the_search(recipe_factory, reference, tmp_path, monkeypatch, kind):
    import mergekit_swarm.output.model_folder as model_folder

    monkeypatch.setattr("safetensors.torch.save_file", _no_space)  # mergekit's writer (full models)
    monkeypatch.setattr(model_folder, "save_file", _no_space)  # adapters
    recipe, out = _recipe(recipe_factory, kind, tmp_path), tmp_path / "out"
    with pytest.raises(OutputError) as err:
        run_swarm(load_recipe(recipe), out, QUIET)
    assert str(err.value).startswith(f"cannot write {tmp_path}/.out.partial: No space left on device; the search so far is kept")
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / ".out.partial").iterdir()) == sorted([OUTPUT_MARKER, STATE_FILE, HISTORY_FILE])

    monkeypatch.undo()
    _same_search(run_swarm(load_recipe(recipe), out, RunOptions(quiet=True, resume=True)), reference[kind])


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")],
)
@pytest.mark.parametrize("fails", ["history", "checkpoint"])
def test_a_failed_history_or_checkpoint_write_resumes(recipe_factory, reference, tmp_path, monkeypatch, code, reason, fails):
    """The second iteration's history sync, or its checkpoint, cannot be written."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == (3 if fails == "history" else 4):  # 1: history, 2: state (iteration 0); 3, 4: iteration 1
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    recipe, out = _recipe(recipe_factory, "lora", tmp_path), tmp_path / "out"
    with pytest.raises(OutputError) as err:
        run_swarm(load_recipe(recipe), out, QUIET)
    path = tmp_path / ".out.partial" / (HISTORY_FILE if fails == "history" else STATE_FILE)
    assert str(err.value).startswith(f"cannot write {path}: {reason}; the search so far is kept"), str(err.value)
    assert not out.exists() and not path.with_name(STATE_FILE + ".tmp").exists()

    monkeypatch.undo()
    _same_search(run_swarm(load_recipe(recipe), out, RunOptions(quiet=True, resume=True)), reference["lora"])


def test_apply_on_a_full_disk_leaves_nothing(recipe_factory, reference, tmp_path, monkeypatch):
    winner = tmp_path / "winner"
    run_swarm(load_recipe(_recipe(recipe_factory, "full", tmp_path)), winner, QUIET)
    monkeypatch.setattr("safetensors.torch.save_file", _no_space)
    result = CliRunner().invoke(main, ["apply", str(winner / "mergekit_config.yml"), str(tmp_path / "applied")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot write {tmp_path}/.applied.partial: No space left on device"
    assert not (tmp_path / "applied").exists() and not (tmp_path / ".applied.partial").exists()
    monkeypatch.undo()
    apply_recipe(winner / "mergekit_config.yml", tmp_path / "applied", QUIET)  # and works once there is room


def test_compare_without_permission_leaves_nothing(recipe_factory, tmp_path, monkeypatch):
    from mergekit_swarm.commands.compare import leaderboard

    def denied(self, folder):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder / "leaderboard.json"))

    monkeypatch.setattr(leaderboard.Leaderboard, "write", denied)
    args = ["compare", str(recipe_factory("lora", folder=tmp_path / "recipe")), str(tmp_path / "board"), "--quiet"]
    result = CliRunner().invoke(main, [*args, "--granularities", "model", "--baselines", "best_expert"])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: cannot write {tmp_path}/.board.partial/leaderboard.json: Permission denied"
    assert not (tmp_path / "board").exists() and not (tmp_path / ".board.partial").exists()
