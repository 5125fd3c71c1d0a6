"""The Ray backend on a GPU: one worker holding the GPU (`gpus_per_worker: 1`), its particles scored in
one batch on it, gives the search of the same run in process, bit for bit. Runs on the GPU machine
(`pytest -m gpu`), where Ray is carried in as `benchmarks/device/ray_pack.sh` packs it."""

from __future__ import annotations

import json
import logging

import pytest

from mergekit_swarm.commands.run import RunOptions, run_swarm
from mergekit_swarm.config import load_recipe
from tests.helpers import spy_on_submissions

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def gpu_cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def decided(result, out) -> tuple:
    lines = (out / "swarm_history.jsonl").read_text().splitlines()
    history = [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in lines]
    return result.coefficients, result.winner_dev, result.expert_test, result.winner_test, result.fallbacks, history


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_on_cuda_a_ray_worker_with_a_gpu_gives_the_in_process_search(
    gpu_cluster, recipe_factory, zoo, tmp_path, monkeypatch, kind
):
    # the same groups on both sides, so nll (which tells the zoo's LoRA particles apart) is bit-stable
    utility = {"type": "nll", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 8}
    evaluation = {"particles_per_batch": 5 if kind == "lora" else 1, "workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1}
    recipe = load_recipe(recipe_factory(kind, swarm={"particles": 5}, utility=utility, evaluation=evaluation))
    local = decided(run_swarm(recipe, tmp_path / "local", RunOptions(quiet=True, device="cuda")), tmp_path / "local")
    calls = spy_on_submissions(monkeypatch)
    on_ray = decided(run_swarm(recipe, tmp_path / "ray", RunOptions(quiet=True, device="cuda", backend="ray")), tmp_path / "ray")
    assert on_ray == local and on_ray[4] == 0  # the same search, and no batch fell back to one at a time
    assert len({line["utility"] for line in on_ray[5]}) > 1  # the particles really differ
    assert [node["device"] for node in calls[0][0].nodes] == ["cuda"]
    if kind == "lora":
        assert any(task.coefficients.shape[0] == 5 for _, _, task in calls)  # a whole iteration in one batch
