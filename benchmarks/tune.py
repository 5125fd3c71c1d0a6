"""Tune the swarm's defaults on the testbed's dev splits only (test is never read here).

    python benchmarks/tune.py

Runs the swarm alone (granularity model, the testbed's budget) with each candidate setting on
every objective and pool over the seeds, and ranks the settings by mean dev utility and mean
dev rank. Writes `benchmarks/results/tune.{json,md}`. The granularity is compared in the
quality table (`quality.py`), on dev as well.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

from common import command, header, machine, versions, write_report
from quality import OBJECTIVES

from mergekit_swarm.testing import testbed

TESTBED = Path(__file__).resolve().parent / "testbed"  # cache/ (built testbeds) and runs/ (comparison folders)

CANDIDATES = {  # name: swarm settings over the defaults
    "paper (official argparse defaults)": {},
    "re-implementation defaults": {"inertia": 0.2, "cognitive": 0.3, "social": 0.4, "repel": 0.05, "step_length": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--testbed-seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergekit_swarm.compare import CompareOptions, run_comparison
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.options import RunOptions, silence_library_progress_bars

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    silence_library_progress_bars()
    start = time.perf_counter()
    root = testbed.build(args.testbed_seed, root=TESTBED / "cache" / f"seed-{args.testbed_seed}")
    runs = []
    for pool in ("lora", "full"):
        for objective in OBJECTIVES:
            recipe = load_recipe(root / "recipes" / pool / f"{objective}.yml")
            for name, overrides in CANDIDATES.items():
                tuned = dataclasses.replace(recipe, swarm=recipe.swarm.model_copy(update=overrides), utility=_dev_only(recipe))
                for seed in args.seeds:
                    out = TESTBED / "runs" / "tune" / pool / objective / f"{list(CANDIDATES).index(name)}-seed-{seed}"
                    options = CompareOptions(baselines=(), granularities=("model",), seed=seed)
                    board = run_comparison(tuned, out, RunOptions(overwrite=True, quiet=True), options)
                    entry = board.entry("swarm_model")
                    runs.append({"pool": pool, "objective": objective, "setting": name, "seed": seed, "dev": entry.dev})
                    print(f"{pool} / {objective} / {name} / seed {seed}: dev {entry.dev}", flush=True)
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "candidates": CANDIDATES,
        "seeds": args.seeds,
        "swarm": testbed.SWARM,
        "total_seconds": round(time.perf_counter() - start, 1),
        "runs": runs,
    }
    write_report("tune", report, markdown(report))


def _dev_only(recipe):
    """The recipe's utility without its test split: tuning must not even compute test scores."""
    utility = recipe.utility
    if utility.type == "multitask":
        components = [c.model_copy(update={"utility": c.utility.model_copy(update={"test": None})}) for c in utility.components]
        return utility.model_copy(update={"components": components})
    return utility.model_copy(update={"test": None})


def markdown(report: dict) -> str:
    runs = report["runs"]
    cells: dict[tuple, dict[str, float]] = {}
    for r in runs:
        cells.setdefault((r["pool"], r["objective"]), {}).setdefault(r["setting"], []).append(r["dev"])
    ranks: dict[str, list[float]] = {}
    means: dict[str, list[float]] = {}
    for per_setting in cells.values():
        mean = {s: statistics.mean(v) for s, v in per_setting.items()}
        order = sorted(mean, key=lambda s: -mean[s])
        for s in mean:
            ranks.setdefault(s, []).append(order.index(s) + 1)
            means.setdefault(s, []).append(mean[s])
    lines = header("Tuning the swarm's defaults on dev", report)
    lines += [
        f"Swarm alone, granularity model, {report['swarm']}, seeds {report['seeds']}, every testbed objective "
        f"and both pools; dev utility only. {report['total_seconds'] / 60:.1f} min.",
        "",
        "| setting | overrides | mean dev rank | mean dev utility |",
        "|---|---|---:|---:|",
    ]
    for s in sorted(ranks, key=lambda s: statistics.mean(ranks[s])):
        lines.append(
            f"| {s} | {report['candidates'][s] or '-'} | {statistics.mean(ranks[s]):.2f} | {statistics.mean(means[s]):.4f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
