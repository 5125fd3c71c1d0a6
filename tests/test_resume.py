"""A run killed with SIGKILL mid-iteration, then resumed, ends exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

KILLABLE = """
import os
import signal
from pathlib import Path

from mergekit_swarm.utilities.data import load_examples
from mergekit_swarm.utilities.nll import NegativeLoss

EXAMPLES = load_examples(Path(os.environ["SWARM_TEST_DEV"]))


def score(model, tokenizer):
    counter = Path(os.environ["SWARM_TEST_COUNTER"])
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    if calls == int(os.environ.get("SWARM_TEST_KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: like a crash or an OOM kill
    return NegativeLoss(EXAMPLES, batch_size=16)(model, tokenizer)
"""


def swarm(recipe, out, *flags, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mergekit_swarm", str(recipe), str(out), "--quiet", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def evaluations(out) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "swarm_history.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["particle"], r["utility"]) for r in rows]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
@pytest.mark.parametrize("space", ["factor", "update"])
def test_sigkill_mid_iteration_then_resume_gives_the_same_winner_and_history(zoo, recipe_factory, tmp_path, space):
    (tmp_path / "killable.py").write_text(KILLABLE)
    recipe = recipe_factory(
        "lora",
        swarm={"particles": 4, "max_iterations": 4, "patience": 10, "granularity": "tensor", "lora_space": space},
        utility={"type": "python", "function": str(tmp_path / "killable.py") + ":score"},
    )
    env = {**os.environ, "SWARM_TEST_DEV": str(zoo.dev), "HF_HUB_OFFLINE": "1"}

    whole = swarm(recipe, tmp_path / "whole", env={**env, "SWARM_TEST_COUNTER": str(tmp_path / "c1")})
    assert whole.returncode == 0, whole.stderr

    killed_env = {**env, "SWARM_TEST_COUNTER": str(tmp_path / "c2"), "SWARM_TEST_KILL_AT": "11"}  # iteration 2, particle 2
    killed = swarm(recipe, tmp_path / "out", env=killed_env)
    assert killed.returncode == -9
    partial = tmp_path / ".out.partial"
    assert not (tmp_path / "out").exists() and partial.is_dir()
    assert len((partial / "swarm_history.jsonl").read_text().splitlines()) == 10  # 2 lines past the checkpoint

    refused = swarm(recipe, tmp_path / "out", env=killed_env)
    assert refused.returncode == 1 and "pass --resume to continue it" in refused.stderr

    resumed = swarm(recipe, tmp_path / "out", "--resume", env={**env, "SWARM_TEST_COUNTER": str(tmp_path / "c3")})
    assert resumed.returncode == 0, resumed.stderr
    assert int((tmp_path / "c3").read_text()) == 12  # only iterations 2, 3 and 4 are evaluated again

    out, reference = tmp_path / "out", tmp_path / "whole"
    assert evaluations(out) == evaluations(reference)
    assert (out / "adapter_model.safetensors").read_bytes() == (reference / "adapter_model.safetensors").read_bytes()
    result, expected = (json.loads((d / "swarm_result.json").read_text()) for d in (out, reference))
    assert result["coefficients"] == expected["coefficients"] and result["winner_dev"] == expected["winner_dev"]
