"""The Ray backend on a local 2-CPU cluster (shared by the module): same search as in process,
dead workers replaced, Ctrl-C stops the actors, and only coefficients travel."""

from __future__ import annotations

import json
import logging
import pickle
import sys

import pytest
import ray
from click.testing import CliRunner

from mergekit_swarm.cli import main
from mergekit_swarm.commands.run import RunOptions, run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ConfigError, WorkerError
from mergekit_swarm.search.ray_backend import EvaluationWorker, WorkerSpec
from mergekit_swarm.utilities.data import load_examples
from tests.helpers import experts_answers, spy_on_submissions, write_recipe

RAY = RunOptions(quiet=True, backend="ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def recipe_file(zoo, tmp_path_factory):
    """LoRA experts, 4 particles evaluated two by two in mixed-adapter batches: two groups per
    iteration, one for each of the two workers (the paper's start: with `initial: merges` the
    experts are evaluated before the swarm is formed, which adds a group)."""
    utility = {"type": "nll", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 16}
    return write_recipe(
        tmp_path_factory.mktemp("ray_recipe"),
        zoo.lora,
        base=zoo.base,
        swarm={"max_iterations": 3, "initial": "experts"},
        utility=utility,
        evaluation={"particles_per_batch": 2, "workers": 2, "cpus_per_worker": 1},
    )


def outcome(result, out) -> tuple:
    """Everything a run decides: winner, scores, every history line (but its timing), weights."""
    lines = (out / "swarm_history.jsonl").read_text().splitlines()
    history = [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in lines]
    scores = (result.coefficients, result.winner_dev, result.expert_dev, result.expert_test, result.winner_test)
    return scores, history, (out / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def in_process(recipe_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    return outcome(run_swarm(load_recipe(recipe_file), out, RunOptions(quiet=True)), out)


def test_ray_run_equals_the_in_process_run_and_sends_only_coefficients(cluster, recipe_file, in_process, tmp_path, monkeypatch):
    calls = spy_on_submissions(monkeypatch)
    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_file), out, RAY)
    assert outcome(result, out) == in_process

    evaluator = calls[0][0]
    assert len(evaluator.nodes) == 2 and len({node["pid"] for node in evaluator.nodes}) == 2
    assert {worker for _, worker, _ in calls} == {0, 1}  # both workers took groups
    # 4 iterations x 2 groups, then the test report (3 experts + the winner: 2 groups)
    assert [task.split for _, _, task in calls] == ["dev"] * 8 + ["test"] * 2
    expert_bytes = sum((e / "adapter_model.safetensors").stat().st_size for e in load_recipe(recipe_file).experts)
    for _, _, task in calls:
        assert task.coefficients.shape == (2, 1, 3)  # two particles x one parameter group x three experts
        sent = len(pickle.dumps(task))
        assert sent < task.coefficients.nbytes + 400 and sent < expert_bytes / 100, sent


def test_an_update_space_pool_on_ray_equals_the_in_process_run(cluster, zoo, tmp_path):
    utility = {"type": "nll", "dev": str(zoo.dev), "batch_size": 16}
    swarm = {"max_iterations": 1, "lora_space": "update", "base_as_expert": True}
    evaluation = {"particles_per_batch": 2, "workers": 2, "cpus_per_worker": 1}
    recipe = load_recipe(write_recipe(tmp_path, zoo.lora, base=zoo.base, swarm=swarm, utility=utility, evaluation=evaluation))
    local = run_swarm(recipe, tmp_path / "local", RunOptions(quiet=True))
    on_ray = run_swarm(recipe, tmp_path / "ray", RAY)
    assert outcome(on_ray, tmp_path / "ray")[:2] == outcome(local, tmp_path / "local")[:2]
    assert len({line["utility"] for line in outcome(local, tmp_path / "local")[1]}) > 2


def test_a_full_model_pool_on_ray_equals_the_in_process_run(cluster, zoo, tmp_path):
    utility = {"type": "exact_match", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 8, "max_new_tokens": 6}
    recipe = load_recipe(write_recipe(tmp_path, zoo.full, swarm={"max_iterations": 1}, utility=utility))
    local = run_swarm(recipe, tmp_path / "local", RunOptions(quiet=True))
    on_ray = run_swarm(recipe, tmp_path / "ray", RAY)
    assert (tmp_path / "ray" / "model.safetensors").read_bytes() == (tmp_path / "local" / "model.safetensors").read_bytes()
    results = [json.loads((tmp_path / run / "swarm_result.json").read_text()) for run in ("ray", "local")]
    assert [{k: v for k, v in r.items() if k != "timing"} for r in results] == [  # all but how long it took
        {k: v for k, v in results[1].items() if k != "timing"}
    ] * 2
    assert on_ray.winner_test == local.winner_test is not None


def test_racing_on_ray_workers_gives_the_in_process_racing_search(cluster, zoo, tokenizer, tmp_path, monkeypatch):
    """Each group races on its worker with its particles' limits; a stall probe step finishes the stopped
    particles on whichever worker is idle, from the scores they had (which travel with the task)."""
    from mergekit_swarm.testing import toy

    prompts = tmp_path / "prompts.jsonl"
    toy.write_jsonl(prompts, toy.make_examples(["reverse", "sort", "copy"], 48, seed=500))
    dev = experts_answers(zoo, "lora", tokenizer, tmp_path, prompts, favourite=0.5)
    utility = {"type": "exact_match", "dev": str(dev), "batch_size": 4, "max_new_tokens": 6}
    swarm = {"particles": 6, "max_iterations": 5, "patience": 9, "racing": "exact", "racing_slices": 6, "stall_probes": 0.5}
    evaluation = {"particles_per_batch": 3, "workers": 2, "cpus_per_worker": 1}
    recipe = load_recipe(write_recipe(tmp_path, zoo.lora, base=zoo.base, swarm=swarm, utility=utility, evaluation=evaluation))
    local = run_swarm(recipe, tmp_path / "local", RunOptions(quiet=True))
    calls = spy_on_submissions(monkeypatch)
    on_ray = run_swarm(recipe, tmp_path / "ray", RAY)
    assert outcome(on_ray, tmp_path / "ray") == outcome(local, tmp_path / "local")  # every history line: examples too
    assert on_ray.racing == local.racing and local.racing["stopped"] > 0
    raced = [task for _, _, task in calls if task.racing is not None]
    assert raced and all(len(task.racing.limits) == len(task.coefficients) for task in raced if task.stopped is None)
    finished = [task for _, _, task in calls if task.stopped is not None]
    assert len(finished) > 0 and local.racing["finished_for_probes"] > 0  # a probe step finished stopped particles


def test_confident_racing_on_ray_pairs_with_the_personal_bests_as_in_process(cluster, zoo, tokenizer, tmp_path, monkeypatch):
    """`racing: confident` on nll: each task carries its particles' personal bests' scores on every dev
    example, and the workers' paired stops give the in-process search."""
    utility = {"type": "nll", "dev": str(zoo.dev), "batch_size": 4}
    swarm = {"particles": 6, "max_iterations": 4, "patience": 9, "racing": "confident", "racing_slices": 4}
    evaluation = {"particles_per_batch": 3, "workers": 2, "cpus_per_worker": 1}
    recipe = load_recipe(write_recipe(tmp_path, zoo.lora, base=zoo.base, swarm=swarm, utility=utility, evaluation=evaluation))
    local = run_swarm(recipe, tmp_path / "local", RunOptions(quiet=True))
    calls = spy_on_submissions(monkeypatch)
    on_ray = run_swarm(recipe, tmp_path / "ray", RAY)
    assert outcome(on_ray, tmp_path / "ray") == outcome(local, tmp_path / "local")
    assert on_ray.racing == local.racing and local.racing["stopped"] > 0
    limits = [limit for _, _, task in calls if task.racing is not None for limit in task.racing.limits if limit is not None]
    assert limits and all(limit.paired is not None and len(limit.paired[""]) == len(load_examples(zoo.dev)) for limit in limits)


def test_a_killed_worker_is_replaced_and_the_winner_is_unchanged(cluster, recipe_file, in_process, tmp_path, monkeypatch):
    def kill_third(calls):
        if len(calls) == 3:  # iteration 1, while the worker holds a group
            evaluator, worker, _ = calls[-1]
            ray.kill(evaluator.workers[worker])

    calls = spy_on_submissions(monkeypatch, kill_third)
    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_file), out, RAY)
    assert calls[0][0].replacements == 1
    assert len(calls) == 11  # the killed worker's group was submitted again
    assert sorted(task.first for _, _, task in calls[2:5]) == [0, 0, 2]  # iteration 1: group 0 twice
    assert outcome(result, out) == in_process


def test_ctrl_c_shuts_the_workers_down_and_the_run_resumes_to_the_same_winner(
    cluster, recipe_file, in_process, tmp_path, monkeypatch
):
    workers = []

    def interrupt_at_fifth(calls):
        if len(calls) == 5:  # iteration 2: iterations 0 and 1 are checkpointed
            workers.extend(calls[-1][0].workers)
            raise KeyboardInterrupt

    spy_on_submissions(monkeypatch, interrupt_at_fifth)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_swarm(load_recipe(recipe_file), out, RAY)
    assert len(workers) == 2
    for worker in workers:  # killed, not left holding a model
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.evaluate.remote(None), timeout=60)
    monkeypatch.undo()
    result = run_swarm(load_recipe(recipe_file), out, RunOptions(quiet=True, backend="ray", resume=True))
    assert outcome(result, out) == in_process


def test_workers_that_keep_dying_stop_the_run_with_a_clear_error(cluster, zoo, recipe_file, tmp_path, monkeypatch):
    def kill_every_worker(calls):
        evaluator, worker, _ = calls[-1]
        ray.kill(evaluator.workers[worker])

    spy_on_submissions(monkeypatch, kill_every_worker)
    text = recipe_file.read_text().replace("cpus_per_worker: 1", "cpus_per_worker: 1\n  max_retries: 1")
    (tmp_path / "swarm.yml").write_text(text)
    out = tmp_path / "out"
    with pytest.raises(WorkerError, match=r"Ray workers died 2 times evaluating particles [02]\.\.[13] \(max_retries: 1\)"):
        run_swarm(load_recipe(tmp_path / "swarm.yml"), out, RAY)
    assert not out.exists()


def test_a_worker_asking_for_a_gpu_the_cluster_lacks_is_refused_instead_of_waiting(cluster, recipe_file, tmp_path):
    text = recipe_file.read_text().replace("cpus_per_worker: 1", "cpus_per_worker: 1\n  gpus_per_worker: 1")
    (tmp_path / "swarm.yml").write_text(text)
    with pytest.raises(ConfigError, match=r"a worker needs 1 GPU, and the Ray cluster has 0 \(set gpus_per_worker"):
        run_swarm(load_recipe(tmp_path / "swarm.yml"), tmp_path / "out", RAY)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_worker_that_sees_other_files_refuses_to_start(recipe_file):
    spec = WorkerSpec(load_recipe(recipe_file), RunOptions(), "model", 1, False, fingerprint="0" * 64, threads=1)
    with pytest.raises(WorkerError, match="^Ray worker on .+: it sees other experts, base model or utility files than"):
        EvaluationWorker().start(spec)


def test_without_ray_installed_the_backend_names_the_extra(recipe_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when it is not installed
    result = CliRunner().invoke(main, [str(recipe_file), str(tmp_path / "out"), "--backend", "ray", "--quiet"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: evaluation: backend: ray needs the 'ray' package: pip install 'mergekit-swarm[ray]'"
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
