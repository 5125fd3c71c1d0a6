"""The quality table: every method on every testbed objective, both pools, two testbeds.

    python benchmarks/quality.py            # full table (builds the testbeds first if needed)
    python benchmarks/quality.py --quick    # testbed 0, LoRA pool, 3 objectives, 1 seed
    python benchmarks/quality.py --pools lora --lora-space factor   # the LoRA cells in the paper's space

Writes `benchmarks/results/quality.{json,md}` and `quality_budget.png` (or `quality_quick.*`; with
`--lora-space S`, `quality_S.*`: every method that searches LoRA coefficients in space S). A cell
is one (testbed, pool, objective); in each, every method is `mergekit-swarm compare` on the testbed
recipe (the swarm at the recipe's settings, once more with 3x the iterations, the one-shot baselines,
random search, LoraHub and CMA-ES with the swarm's budget), over the search seeds (one-shot
baselines are deterministic given the testbed and run with the first seed only). Per cell: dev and
test, the default swarm's test difference to each method with a paired bootstrap 95% interval over
the 2000 test examples (`lib/quality_stats.py`), and whether the interval excludes 0 (a significant win
or loss); then a summary per method over all cells. Each comparison folder (leaderboard, recipes,
swarm histories, per-example test scores) is kept under `benchmarks/testbed/runs/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

from lib.common import RESULTS, command, header, machine, versions, write_report
from lib.quality_stats import plot_budget, utility_of
from lib.quality_table import (
    LONG_SWARM,
    aggregate,
    budget_curves,
    cell_key,
    differences,
    format_difference,
    format_value,
    summary,
)

from mergekit_swarm.testing import testbed

TESTBED = Path(__file__).resolve().parent / "testbed"  # cache/ (built testbeds) and runs/ (comparison folders)

OBJECTIVES = ("sort", "add", "double", "reverse_shift", "mix_reverse_add", "mix_sort_shift_count", "multitask", "reward", "judge")
QUICK_OBJECTIVES = ("reverse_shift", "mix_reverse_add", "multitask")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="testbed 0, LoRA pool, 3 objectives, 1 seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="search seeds (default 0; more: a longer table)")
    parser.add_argument("--testbed-seeds", type=int, nargs="+", default=None, help="default 0 1 (quick: 0)")
    parser.add_argument("--objectives", nargs="+", default=None)
    parser.add_argument("--pools", nargs="+", default=None, choices=("lora", "full"))
    parser.add_argument("--granularities", default="model", help="swarm granularities (default: model)")
    parser.add_argument(
        "--lora-space", default=None, choices=("update", "factor"), help="LoRA search space (default: the recipe's)"
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md and plot from the saved .json")
    args = parser.parse_args()
    name = ("quality_quick" if args.quick else "quality") + (f"_{args.lora_space}" if args.lora_space else "")
    if args.report_only:
        report = json.loads((RESULTS / f"{name}.json").read_text())
        plot_budget(budget_curves(report["runs"]), RESULTS / f"{name}_budget.png")
        write_report(name, report, markdown(report, f"{name}_budget.png"))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergekit_swarm.commands.compare import SEARCH_BASELINES, CompareOptions, run_comparison
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.core.run_options import RunOptions, silence_library_progress_bars

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
                if args.lora_space and pool == "lora":
                    recipe = dataclasses.replace(recipe, swarm=recipe.swarm.model_copy(update={"lora_space": args.lora_space}))
                cell = {"testbed": testbed_seed, "pool": pool, "objective": objective}
                space = f"-{args.lora_space}" if args.lora_space else ""  # its comparison folders apart
                examples = []
                for i, seed in enumerate(seeds):
                    out = TESTBED / "runs" / f"testbed-{testbed_seed}" / pool / objective / f"seed-{seed}{space}"
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
        "lora_space": args.lora_space,
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
    plot_budget(budget_curves(runs), RESULTS / f"{name}_budget.png")
    write_report(name, report, markdown(report, f"{name}_budget.png"))


def markdown(report: dict, plot: str) -> str:
    rows, cells = report["rows"], {cell_key(c): c["differences"] for c in report["cells"]}
    lines = header(
        "Search quality on the testbed"
        + (" (quick)" if report["quick"] else "")
        + (f", LoRA searched in {report['lora_space']} space" if report.get("lora_space") else ""),
        report,
    )
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
    for key in dict.fromkeys(cell_key(r) for r in rows):
        part = sorted((r for r in rows if cell_key(r) == key), key=lambda r: -(r["dev"] if r["dev"] is not None else -math.inf))
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
                f"| {title} | {format_value(r, 'dev')} | {format_value(r, 'test')} | "
                f"{format_difference(cells[key].get(r['method']))} | {emergence} | {r['evaluations']:.0f} | {r['seconds']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
