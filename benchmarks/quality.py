"""The quality table: every method on every testbed objective, both pools, two testbeds.

    python benchmarks/quality.py            # full table (builds the testbeds first if needed)
    python benchmarks/quality.py --quick    # testbed 0, LoRA pool, 3 objectives, 1 seed

Writes `benchmarks/results/quality.{json,md}` and `quality_budget.png` (or `quality_quick.*`). A cell
is one (testbed, pool, objective); in each, every method is `mergekit-swarm compare` on the testbed
recipe (the swarm at the recipe's settings, once more with 3x the iterations, the one-shot baselines,
random search, LoraHub and CMA-ES with the swarm's budget), over the search seeds (one-shot
baselines are deterministic given the testbed and run with the first seed only). Per cell: dev and
test, the default swarm's test difference to each method with a paired bootstrap 95% interval over
the 2000 test examples (`quality_stats.py`), and whether the interval excludes 0 (a significant win
or loss); then a summary per method over all cells. Each comparison folder (leaderboard, recipes,
swarm histories, per-example test scores) is kept under `benchmarks/testbed/runs/`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

from common import RESULTS, command, header, machine, versions, write_report
from quality_stats import paired_interval, plot_budget, utility_of, verdict

from mergekit_swarm.testing import testbed

TESTBED = Path(__file__).resolve().parent / "testbed"  # cache/ (built testbeds) and runs/ (comparison folders)

OBJECTIVES = ("sort", "add", "double", "reverse_shift", "mix_reverse_add", "mix_sort_shift_count", "multitask", "reward", "judge")
QUICK_OBJECTIVES = ("reverse_shift", "mix_reverse_add", "multitask")
SWARM = "swarm_model"  # the default swarm: the row every other method is compared with
LONG_SWARM = 3  # the larger-budget swarm row: 3x max_iterations and patience


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="testbed 0, LoRA pool, 3 objectives, 1 seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="search seeds (default 0; more: a longer table)")
    parser.add_argument("--testbed-seeds", type=int, nargs="+", default=None, help="default 0 1 (quick: 0)")
    parser.add_argument("--objectives", nargs="+", default=None)
    parser.add_argument("--pools", nargs="+", default=None, choices=("lora", "full"))
    parser.add_argument("--granularities", default="model", help="swarm granularities (default: model)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md and plot from the saved .json")
    args = parser.parse_args()
    if args.report_only:
        name = "quality_quick" if args.quick else "quality"
        report = json.loads((RESULTS / f"{name}.json").read_text())
        plot_budget(_curves(report["runs"]), RESULTS / f"{name}_budget.png")
        write_report(name, report, markdown(report, f"{name}_budget.png"))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergekit_swarm.compare import SEARCH_BASELINES, CompareOptions, run_comparison
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.options import RunOptions, silence_library_progress_bars

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    silence_library_progress_bars()
    quick = args.quick
    seeds = args.seeds or [0]
    testbeds = args.testbed_seeds or ([0] if quick else [0, 1])
    objectives = tuple(args.objectives or (QUICK_OBJECTIVES if quick else OBJECTIVES))
    pools = tuple(args.pools or (("lora",) if quick else ("lora", "full")))
    granularities = tuple(args.granularities.split(","))

    start = time.perf_counter()
    build_seconds, runs, cells = 0.0, [], []
    for testbed_seed in testbeds:
        built = time.perf_counter()
        root = testbed.build(testbed_seed, root=TESTBED / "cache" / f"seed-{testbed_seed}")  # both pools, cached
        build_seconds += time.perf_counter() - built
        for pool in pools:
            for objective in objectives:
                recipe = load_recipe(root / "recipes" / pool / f"{objective}.yml")
                cell = {"testbed": testbed_seed, "pool": pool, "objective": objective}
                examples = []
                for i, seed in enumerate(seeds):
                    out = TESTBED / "runs" / f"testbed-{testbed_seed}" / pool / objective / f"seed-{seed}"
                    print(f"== {cell} seed {seed}", flush=True)
                    settings = CompareOptions(
                        baselines=CompareOptions().baselines if i == 0 else (),
                        search=SEARCH_BASELINES,
                        granularities=granularities,
                        seed=seed,
                        long_swarm=LONG_SWARM,
                    )
                    board = run_comparison(recipe, out, RunOptions(overwrite=True, quiet=True), settings)
                    runs += [{**cell, "seed": seed, **entry.__dict__} for entry in board.entries]
                    examples.append(json.loads((out / "test_examples.json").read_text())["methods"])
                cells.append({**cell, "differences": differences(examples, utility_of(recipe))})
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "quick": quick,
        "testbeds": testbeds,
        "seeds": seeds,
        "granularities": granularities,
        "swarm": testbed.SWARM,
        "test_examples": testbed.TEST,
        "build_seconds": round(build_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "rows": aggregate(runs),
        "cells": cells,
        "runs": runs,
    }
    name = "quality_quick" if quick else "quality"
    plot_budget(_curves(runs), RESULTS / f"{name}_budget.png")
    write_report(name, report, markdown(report, f"{name}_budget.png"))


def differences(examples: list[dict], combine) -> dict[str, dict]:
    """Per method: the default swarm's test minus the method's, with its paired 95% interval and verdict."""
    ours = [run[SWARM] for run in examples if SWARM in run]
    found = {}
    for method in dict.fromkeys(m for run in examples for m in run):
        if method == SWARM or not ours:
            continue
        theirs = [run[method] for run in examples if method in run]
        # a deterministic method ran once: the same run stands for every seed
        theirs = theirs * len(ours) if len(theirs) == 1 else theirs
        diff, low, high = paired_interval(ours, theirs, combine)
        found[method] = {"difference": diff, "low": low, "high": high, "verdict": verdict(low, high)}
    return found


def _curves(runs: list[dict]) -> dict[str, list[tuple[list[dict], float, float]]]:
    """Budget curves of every run with one, with its cell's best expert (dev, test)."""
    best = {(r["testbed"], r["pool"], r["objective"]): (r["dev"], r["test"]) for r in runs if r["method"] == "best_expert"}
    curves: dict[str, list] = {}
    for r in runs:
        key = (r["testbed"], r["pool"], r["objective"])
        if r["curve"] and key in best and None not in best[key]:
            last = {"evaluations": r["evaluations"], "dev": r["curve"][-1]["dev"], "test": None}  # to where it stopped
            curves.setdefault(r["title"], []).append(([*r["curve"], last], *best[key]))
    return curves


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean and std over the search seeds per (testbed, pool, objective, method)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["testbed"], run["pool"], run["objective"], run["method"]), []).append(run)
    rows = []
    for (testbed_seed, pool, objective, method), items in groups.items():
        row = {
            "testbed": testbed_seed,
            "pool": pool,
            "objective": objective,
            "method": method,
            "title": items[0]["title"],
            "runs": len(items),
        }
        for key in ("dev", "test"):
            values = [r[key] for r in items if r[key] is not None]
            row[key] = statistics.mean(values) if values else None
            row[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        row["evaluations"] = statistics.mean(r["evaluations"] for r in items)
        row["seconds"] = statistics.mean(r["seconds"] for r in items)
        row["note"] = items[0]["note"]
        row["emergence"] = items[0]["emergence"]  # the first seed's
        rows.append(row)
    return rows


def _cell(row: dict, key: str) -> str:
    if row[key] is None:
        return "-"
    return f"{row[key]:.3f} ± {row[f'{key}_std']:.3f}" if row["runs"] > 1 else f"{row[key]:.3f}"


def _difference(found: dict | None) -> str:
    if not found:
        return "-"
    mark = {"win": " **win**", "loss": " **loss**", "tie": ""}[found["verdict"]]
    return f"{found['difference']:+.3f} [{found['low']:+.3f}, {found['high']:+.3f}]{mark}"


def _key(row: dict) -> tuple:
    return row["testbed"], row["pool"], row["objective"]


def markdown(report: dict, plot: str) -> str:
    rows, cells = report["rows"], {_key(c): c["differences"] for c in report["cells"]}
    lines = header("Search quality on the testbed" + (" (quick)" if report["quick"] else ""), report)
    lines += [
        f"Testbeds {report['testbeds']}; search seeds {report['seeds']}; swarm settings {report['swarm']} "
        f"(and {LONG_SWARM}x the iterations and patience in the larger-budget row), granularities "
        f"{', '.join(report['granularities'])}; {report['test_examples']} test examples per objective. "
        f"Build {report['build_seconds']:.0f} s, total {report['total_seconds'] / 60:.1f} min. One-shot baselines "
        "are deterministic and run once. **swarm − method**: the default swarm's test utility minus the "
        "method's, with a paired bootstrap 95% interval over the test examples; **win** / **loss** when the "
        "interval excludes 0. **new / lost**: test examples the method solves that no expert solves, and "
        "ones some expert solves that it misses (exact-match objectives).",
        "",
    ]
    lines += summary(rows, cells)
    lines += ["", f"![budget curves]({plot})", "", "## Every cell", ""]
    for key in dict.fromkeys(_key(r) for r in rows):
        part = sorted((r for r in rows if _key(r) == key), key=lambda r: -(r["dev"] if r["dev"] is not None else -math.inf))
        lines += [
            f"### testbed {key[0]} / {key[1]} / {key[2]}",
            "",
            "| method | dev | test | swarm − method [95% CI] | new / lost | evaluations | seconds |",
            "|---|---:|---:|---|---:|---:|---:|",
        ]
        for r in part:
            title = r["title"] + (f" ({r['note']})" if r["note"] else "")
            emergence = f"+{r['emergence']['new']} / -{r['emergence']['lost']}" if r["emergence"] else "-"
            lines.append(
                f"| {title} | {_cell(r, 'dev')} | {_cell(r, 'test')} | {_difference(cells[key].get(r['method']))} | "
                f"{emergence} | {r['evaluations']:.0f} | {r['seconds']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], cells: dict[tuple, dict]) -> list[str]:
    """The default swarm against each method over every cell, and its gain over the best expert."""
    by_cell = {}
    for r in rows:
        by_cell.setdefault(_key(r), {})[r["method"]] = r
    gains = [
        c[SWARM]["test"] - c["best_expert"]["test"]
        for c in by_cell.values()
        if SWARM in c and "best_expert" in c and None not in (c[SWARM]["test"], c["best_expert"]["test"])
    ]

    def lost(found: dict, baselines_only: bool) -> bool:  # the swarm's own rows (3x budget) are not baselines
        return any(f["verdict"] == "loss" for m, f in found.items() if not (baselines_only and m.startswith("swarm")))

    losses = [key for key, found in cells.items() if lost(found, baselines_only=True)]
    any_row = sum(lost(found, baselines_only=False) for found in cells.values())
    lines = [
        "## Summary",
        "",
        f"Default swarm: mean test gain over the best expert **{statistics.mean(gains):+.3f}** over {len(gains)} cells; "
        f"significantly worse than at least one baseline in **{len(losses)}** of {len(cells)} cells"
        + (": " + ", ".join("/".join(map(str, k)) for k in losses) if losses else "")
        + f" ({any_row} cells counting the swarm's own {LONG_SWARM}x-iterations row too).",
        "",
        "| method | cells | mean dev rank | mean test | swarm − method, mean | swarm vs method: wins / ties / losses |",
        "|---|---:|---:|---:|---:|---|",
    ]
    ranks: dict[str, list[int]] = {}
    for c in by_cell.values():
        ranked = sorted((r for r in c.values() if r["dev"] is not None), key=lambda r: -r["dev"])
        for rank, r in enumerate(ranked, start=1):
            ranks.setdefault(r["method"], []).append(rank)
    methods = sorted(ranks, key=lambda m: statistics.mean(ranks[m]))
    for method in methods:
        items = [c[method] for c in by_cell.values() if method in c]
        tests = [r["test"] for r in items if r["test"] is not None]
        found = [cells[k][method] for k in cells if method in cells[k]]
        counts = [sum(f["verdict"] == v for f in found) for v in ("win", "tie", "loss")]
        diff = f"{statistics.mean(f['difference'] for f in found):+.3f}" if found else "-"
        tally = " / ".join(map(str, counts)) if found else "-"
        lines.append(
            f"| {items[0]['title']} | {len(items)} | {statistics.mean(ranks[method]):.1f} | "
            f"{statistics.mean(tests) if tests else float('nan'):.3f} | {diff} | {tally} |"
        )
    return lines


if __name__ == "__main__":
    main()
