"""A swarm search as one stage of stock `mergekit-multi` (its real console script, our hook armed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_swarm.commands.run import RunOptions, run_swarm
from mergekit_swarm.config import load_recipe
from tests.helpers import write_recipe

MULTI = Path(sys.executable).parent / "mergekit-multi"
THREE_STAGES = """\
name: soup
merge_method: linear
models:
  - model: {e0}
    parameters: {{weight: 0.5}}
  - model: {e1}
    parameters: {{weight: 0.5}}
dtype: float32
---
name: swarmed
merge_method: model_swarms
models:
  - model: soup
  - model: {e1}
  - model: {e2}
dtype: float32
swarm: {{particles: 4, max_iterations: 2, seed: 7}}
utility: {{type: nll, dev: data/dev.jsonl, batch_size: 16}}
---
merge_method: slerp
base_model: swarmed
models:
  - model: swarmed
  - model: {e2}
parameters: {{t: 0.5}}
dtype: float32
"""
LORA_THEN_STOCK = """\
name: adapter
merge_method: model_swarms
base_model: {base}
models:
  - model: {a0}
  - model: {a1}
swarm: {{particles: 3, max_iterations: 1, lora_space: update}}
utility: {{type: nll, dev: data/dev.jsonl, batch_size: 16}}
---
merge_method: linear
models:
  - model: {base}+adapter
    parameters: {{weight: 1.0}}
dtype: float32
"""


def multi(folder: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`mergekit-multi multi.yml -I FOLDER/inter --out-path final ...`, run from the recipe's folder (an absolute
    -I: mergekit's model card asks the Hub about relative paths that look like repo ids, offline too)."""
    command = [str(MULTI), "multi.yml", "-I", str(folder / "inter"), "--out-path", "final", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env, timeout=600)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for shard in sorted(folder.glob("*.safetensors")):
        found.update(load_file(str(shard)))
    return found


@pytest.fixture(scope="module")
def three_stages(zoo, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("multi")
    (folder / "data").mkdir()
    shutil.copyfile(zoo.dev, folder / "data" / "dev.jsonl")
    e0, e1, e2 = zoo.full
    (folder / "multi.yml").write_text(THREE_STAGES.format(e0=e0, e1=e1, e2=e2))
    done = multi(folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_a_swarm_stage_runs_the_search_and_later_stock_stages_use_its_winner(three_stages, zoo, tmp_path):
    inter = three_stages / "inter"
    assert (inter / "soup" / "config.json").exists() and (three_stages / "final" / "config.json").exists()
    result = json.loads((inter / "swarmed" / "swarm_result.json").read_text())
    assert result["experts"][0] == "soup" and result["iterations"] >= 1
    # the same document alone, the stage's name written as its folder: the same winner, bit for bit
    alone = write_recipe(
        three_stages / "alone",
        [inter / "soup", *zoo.full[1:]],
        utility={"type": "nll", "dev": str(three_stages / "data" / "dev.jsonl"), "batch_size": 16},
        swarm={"particles": 4, "max_iterations": 2, "seed": 7, "patience": 10},
        dtype="float32",
    )
    recipe = load_recipe(alone)
    recipe = type(recipe)(**{**recipe.__dict__, "swarm": recipe.swarm.model_copy(update={"patience": 10})})
    single = run_swarm(recipe, tmp_path / "alone", RunOptions(quiet=True))
    assert single.coefficients == result["coefficients"]
    ours, staged = tensors(tmp_path / "alone"), tensors(inter / "swarmed")
    assert ours.keys() == staged.keys() and all(torch.equal(ours[k], staged[k]) for k in ours)


def test_lazy_rerun_skips_the_finished_stages(three_stages):
    history = three_stages / "inter" / "swarmed" / "swarm_history.jsonl"
    before = history.stat().st_mtime_ns
    again = multi(three_stages)
    assert again.returncode == 0, again.stderr[-3000:]
    assert history.stat().st_mtime_ns == before  # not searched again


def test_a_lora_pool_stage_then_a_stock_stage_on_base_plus_winner(zoo, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    (tmp_path / "data").mkdir()
    shutil.copyfile(zoo.dev, tmp_path / "data" / "dev.jsonl")
    (tmp_path / "multi.yml").write_text(LORA_THEN_STOCK.format(base=zoo.base, a0=zoo.lora[0], a1=zoo.lora[1]))
    done = multi(tmp_path, "--lora-merge-cache", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "inter" / "adapter" / "adapter_model.safetensors").exists()
    baked = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(zoo.base), tmp_path / "inter" / "adapter")
    expected = baked.merge_and_unload().state_dict()
    final = tensors(tmp_path / "final")
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in final)


def test_a_recipe_without_swarm_stage_runs_exactly_as_stock(zoo, tmp_path):
    stock = (
        THREE_STAGES.split("---")[0] + "---\nmerge_method: linear\nmodels:\n  - model: soup\n    parameters: {{weight: 1.0}}\n"
    )
    outputs = {}
    for hook in ("armed", "off"):
        folder = tmp_path / hook
        folder.mkdir()
        (folder / "multi.yml").write_text(stock.format(e0=zoo.full[0], e1=zoo.full[1]))
        env = {"MERGEKIT_SWARM_DISABLE_HOOK": "1"} if hook == "off" else {}
        done = multi(folder, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[hook] = tensors(folder / "final")
    assert all(torch.equal(outputs["armed"][k], outputs["off"][k]) for k in outputs["off"])


def test_a_broken_swarm_stage_is_one_line(zoo, tmp_path):
    (tmp_path / "multi.yml").write_text(THREE_STAGES.format(e0=zoo.full[0], e1=zoo.full[1], e2=zoo.full[2]))
    done = multi(tmp_path)  # no data/dev.jsonl beside the recipe
    assert done.returncode != 0
    error = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "stage swarmed" in error[0] and "dev.jsonl" in error[0], done.stderr[-2000:]
