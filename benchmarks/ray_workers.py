"""Evaluations per second in process and on 1 and 2 Ray workers (the quickstart's objective).

    python benchmarks/ray_workers.py [--iterations 8] [--repeats 3] [--device cuda]

Every configuration scores the same particles (the quickstart's 10 per iteration: 4 LoRA
experts of a tiny char-level LM, exact match on 200 dev prompts, greedy generation), after
one warm-up iteration, `--repeats` times (the median pass is reported: this machine's speed
drifts); worker start-up (loading the models) is timed apart. The utilities must equal the
in-process ones bit for bit. Writes `benchmarks/results/ray_workers.{json,md}`.

On this 2-core machine the workers share the CPU with each other and with the driver, so the
figures show the overhead and the scheduling, not the target: one worker per GPU (or node),
each with its own resident model, where evaluations per second grow with the workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from lib.common import command, header, machine, versions, write_report

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=8, help="timed iterations per pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per configuration (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import ray
    import torch

    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.core.run_options import RunOptions
    from mergekit_swarm.search.evaluator import LocalEvaluator
    from mergekit_swarm.search.ray_backend import EvaluationTask, RayEvaluator
    from mergekit_swarm.search.setup import prepare
    from mergekit_swarm.testing import quickstart

    recipe = load_recipe(quickstart.build(ROOT / "examples" / "quickstart", quiet=True))
    options = RunOptions(quiet=True, device=args.device)
    setup = prepare(recipe, options, recipe.swarm.granularity)
    particles = recipe.swarm.particle_count(len(setup.pool))
    rng = np.random.default_rng(0)
    iterations = [
        [rng.dirichlet(np.ones(len(setup.pool)))[None, :] for _ in range(particles)] for _ in range(args.iterations + 1)
    ]
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
    ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False, logging_level=logging.WARNING)

    def measure(name: str, open_evaluator) -> dict:
        start = time.perf_counter()
        evaluator = open_evaluator()
        startup = time.perf_counter() - start
        try:
            warm = [e.utility for e in evaluator.evaluate(iterations[0])]
            passes = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                scores = [[e.utility for e in evaluator.evaluate(batch)] for batch in iterations[1:]]
                passes.append(time.perf_counter() - start)
        finally:
            evaluator.close()
        evaluations, seconds = particles * args.iterations, statistics.median(passes)
        print(f"{name}: {evaluations / seconds:.2f} evaluations/s", file=sys.stderr)
        return {
            "configuration": name,
            "startup_s": round(startup, 2),
            "evaluations": evaluations,
            "seconds": round(seconds, 3),
            "seconds_per_pass": [round(x, 3) for x in passes],
            "evaluations_per_s": round(evaluations / seconds, 3),
            "utilities": [warm, *scores],
        }

    def on_ray(workers: int, cpus: float):
        settings = recipe.evaluation.model_copy(
            update={"backend": "ray", "workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": 1 if gpus else 0}
        )
        return lambda: RayEvaluator(recipe, setup, options, settings, particles=particles)

    threads = torch.get_num_threads()
    rows = [
        measure(
            f"in process ({threads} torch threads)",
            lambda: LocalEvaluator.open(setup, options),
        ),
        measure("Ray, 1 worker x 1 CPU", on_ray(1, 1)),
        measure("Ray, 1 worker x 2 CPU", on_ray(1, 2)),
        measure("Ray, 2 workers x 1 CPU", on_ray(2, 1)),
    ]
    ray.shutdown()
    reference = rows[0]["utilities"]
    for row in rows:
        row["same_utilities_as_in_process"] = row.pop("utilities") == reference
    task = EvaluationTask(0, np.stack(iterations[0][:1]), "dev")
    models = [*recipe.experts, recipe.base_model]
    weights = sum(p.stat().st_size for folder in models for p in Path(folder).glob("*.safetensors"))
    report = {
        "command": command(),
        "machine": machine(),
        "versions": {**versions(), "ray": ray.__version__},
        "workload": (
            f"quickstart: {len(setup.pool)} LoRA experts, {particles} particles per iteration, "
            f"{args.iterations} timed iterations after 1 warm-up, median of {args.repeats} passes, "
            f"utility {recipe.utility.type}, device {args.device}"
        ),
        "bytes_sent_per_evaluation": len(pickle.dumps(task)),
        "expert_weights_bytes": weights,
        "rows": rows,
    }
    lines = header("Evaluations per second on Ray workers (`ray_workers.py`)", report)
    lines += [
        f"- workload: {report['workload']}",
        f"- sent per evaluation: {report['bytes_sent_per_evaluation']} bytes (the task: particle id + coefficients); "
        f"the base model and experts: {weights / 1e6:.1f} MB, read by each worker from disk once",
        "",
        "| configuration | start-up (s) | evaluations per pass | seconds (median pass) | passes (s) | evaluations / s "
        "| same utilities as in process |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['configuration']} | {row['startup_s']:.1f} | {row['evaluations']} | {row['seconds']:.2f} "
            f"| {', '.join(f'{x:.2f}' for x in row['seconds_per_pass'])} | {row['evaluations_per_s']:.2f} "
            f"| {'yes' if row['same_utilities_as_in_process'] else 'NO'} |"
        )
    lines += [
        "",
        "On a 2-core machine the workers compete for the same cores (and with the driver), so this measures the "
        "Ray overhead and the scheduling; the real target is one worker per GPU or node, each with its own "
        "resident model.",
        "",
    ]
    write_report("ray_workers", report, "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
