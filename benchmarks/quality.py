"""The quality table: every method on every testbed objective, both pools, over several seeds.

    python benchmarks/quality.py            # full table (builds the testbed first if needed)
    python benchmarks/quality.py --quick    # LoRA pool, 3 objectives, 1 seed, swarm per model

Writes `benchmarks/results/quality.{json,md}` (or `quality_quick.*`): objectives x methods, dev and
test mean ± std over the seeds, evaluations used, wall time, with the machine, versions and
command. The seed drives the swarm, the search baselines and DARE; the one-shot baselines are
deterministic given the testbed, so they run with the first seed only (std 0 by construction).
Each comparison is `mergekit-swarm compare` on a testbed recipe; its folder (leaderboard,
recipes, swarm histories) is kept under `benchmarks/testbed/runs/`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

from common import command, header, machine, versions, write_report

from mergekit_swarm.testing import testbed

TESTBED = Path(__file__).resolve().parent / "testbed"  # cache/ (built testbeds) and runs/ (comparison folders)

OBJECTIVES = ("sort", "add", "double", "reverse_shift", "multitask", "reward", "judge")
QUICK_OBJECTIVES = ("reverse_shift", "multitask", "reward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LoRA pool, 3 objectives, 1 seed, swarm per model only")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="search seeds (default 0 1 2; quick: 0)")
    parser.add_argument("--testbed-seed", type=int, default=0)
    parser.add_argument("--objectives", nargs="+", default=None)
    parser.add_argument("--pools", nargs="+", default=None, choices=("lora", "full"))
    parser.add_argument("--granularities", default=None, help="swarm granularities (default model,layer,tensor; quick: model)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergekit_swarm.cli import _silence_library_progress_bars
    from mergekit_swarm.compare import SEARCH_BASELINES, CompareOptions, run_comparison
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.options import RunOptions

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    _silence_library_progress_bars()
    quick = args.quick
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    objectives = tuple(args.objectives or (QUICK_OBJECTIVES if quick else OBJECTIVES))
    pools = tuple(args.pools or (("lora",) if quick else ("lora", "full")))
    granularities = tuple((args.granularities or ("model" if quick else "model,layer,tensor")).split(","))

    start = time.perf_counter()
    root = testbed.build(
        args.testbed_seed, root=TESTBED / "cache" / f"seed-{args.testbed_seed}"
    )  # both pools: one cached build serves --quick and the full table
    build_seconds = time.perf_counter() - start
    runs = []
    for pool in pools:
        for objective in objectives:
            recipe = load_recipe(root / "recipes" / pool / f"{objective}.yml")
            for i, seed in enumerate(seeds):
                out = TESTBED / "runs" / f"testbed-{args.testbed_seed}" / pool / objective / f"seed-{seed}"
                print(f"== {pool} / {objective} / seed {seed}", flush=True)
                settings = CompareOptions(
                    baselines=CompareOptions().baselines if i == 0 else (),
                    search=SEARCH_BASELINES,
                    granularities=granularities,
                    seed=seed,
                )
                board = run_comparison(recipe, out, RunOptions(overwrite=True, quiet=True), settings)
                for entry in board.entries:
                    runs.append({"pool": pool, "objective": objective, "seed": seed, **entry.__dict__})
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "quick": quick,
        "testbed_seed": args.testbed_seed,
        "seeds": seeds,
        "granularities": granularities,
        "swarm": testbed.SWARM,
        "build_seconds": round(build_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "rows": aggregate(runs),
        "runs": runs,
    }
    write_report("quality_quick" if quick else "quality", report, markdown(report))


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean and std over seeds per (pool, objective, method)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["pool"], run["objective"], run["method"]), []).append(run)
    rows = []
    for (pool, objective, method), items in groups.items():
        row = {"pool": pool, "objective": objective, "method": method, "title": items[0]["title"], "runs": len(items)}
        for key in ("dev", "test"):
            values = [r[key] for r in items if r[key] is not None]
            row[key] = statistics.mean(values) if values else None
            row[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        row["evaluations"] = statistics.mean(r["evaluations"] for r in items)
        row["seconds"] = statistics.mean(r["seconds"] for r in items)
        row["note"] = items[0]["note"]
        rows.append(row)
    return rows


def _cell(row: dict, key: str) -> str:
    if row[key] is None:
        return "-"
    return f"{row[key]:.3f} ± {row[f'{key}_std']:.3f}" if row["runs"] > 1 else f"{row[key]:.3f}"


def markdown(report: dict) -> str:
    lines = header("Search quality on the testbed" + (" (quick)" if report["quick"] else ""), report)
    lines += [
        f"Testbed seed {report['testbed_seed']}; search seeds {report['seeds']}; swarm settings {report['swarm']}, "
        f"granularities {', '.join(report['granularities'])}. Build {report['build_seconds']:.0f} s, "
        f"total {report['total_seconds'] / 60:.1f} min. One-shot baselines are deterministic and run once.",
        "",
    ]
    rows = report["rows"]
    for pool in dict.fromkeys(r["pool"] for r in rows):
        for objective in dict.fromkeys(r["objective"] for r in rows if r["pool"] == pool):
            part = [r for r in rows if r["pool"] == pool and r["objective"] == objective]
            part.sort(key=lambda r: -(r["dev"] if r["dev"] is not None else -math.inf))
            lines += [
                f"## {pool} / {objective}",
                "",
                "| method | dev | test | evaluations | seconds |",
                "|---|---:|---:|---:|---:|",
            ]
            for r in part:
                title = r["title"] + (f" ({r['note']})" if r["note"] else "")
                lines.append(
                    f"| {title} | {_cell(r, 'dev')} | {_cell(r, 'test')} | {r['evaluations']:.0f} | {r['seconds']:.1f} |"
                )
            lines.append("")
    lines += summary(rows)
    return "\n".join(lines) + "\n"


def summary(rows: list[dict]) -> list[str]:
    """Mean test utility and mean dev rank of each method over every (pool, objective)."""
    cells = {}
    for pool, objective in dict.fromkeys((r["pool"], r["objective"]) for r in rows):
        part = [r for r in rows if r["pool"] == pool and r["objective"] == objective and r["dev"] is not None]
        part.sort(key=lambda r: -r["dev"])
        for rank, r in enumerate(part, start=1):
            cells.setdefault(r["method"], []).append((rank, r))
    lines = [
        "## Summary over objectives and pools",
        "",
        "| method | mean dev rank | mean dev | mean test | wins on test vs best expert |",
        "|---|---:|---:|---:|---:|",
    ]
    best = {(r["pool"], r["objective"]): r["test"] for r in rows if r["method"] == "best_expert"}
    for _, items in sorted(cells.items(), key=lambda kv: statistics.mean(rank for rank, _ in kv[1])):
        tests = [r["test"] for _, r in items if r["test"] is not None]
        wins = sum(
            1
            for _, r in items
            if r["test"] is not None
            and best.get((r["pool"], r["objective"])) is not None
            and r["test"] > best[(r["pool"], r["objective"])]
        )
        lines.append(
            f"| {items[0][1]['title']} | {statistics.mean(rank for rank, _ in items):.1f} | "
            f"{statistics.mean(r['dev'] for _, r in items):.3f} | {statistics.mean(tests) if tests else float('nan'):.3f} | "
            f"{wins}/{len(items)} |"
        )
    return lines + [""]


if __name__ == "__main__":
    main()
