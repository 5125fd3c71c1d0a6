"""One cell of the real-model quality table over several search seeds: is a verdict the seed's or the method's?

    python benchmarks/real_seeds.py                          # subtract: swarm (model, layer) vs CMA-ES, seeds 0-2
    python benchmarks/real_seeds.py --objective mix_add_join --seeds 0 1 --search lorahub cma_es
    python benchmarks/real_seeds.py --granularities model --dev-examples 200   # a larger search dev, same test

`real_quality.py` runs every method of a cell once, with search seed 0. Where that table finds a baseline
significantly better than the swarm, this re-runs the swarm (at each `--granularities`) and the named search
baselines of that cell with other seeds (the best expert once per seed, as the reference for the gain), on
`mergekit_swarm.testing.real_testbed` built from seed 0, and gives per seed and over all seeds pooled the
default swarm's paired test difference to each method (bootstrap 95% interval, as the quality tables).
`--dev-examples N` (more than the testbed's 100) searches on the cell's dev followed by N - 100 examples drawn
right after its test (`real_testbed.further_examples`), the test unchanged: is a verdict the small dev's?
Results in benchmarks/results/real_seeds.{json,md} (`real_seeds_dev<N>` with `--dev-examples`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from lib.common import RESULTS, command, header, machine, versions, write_report
from lib.quality_stats import utility_of
from lib.quality_table import SWARM, differences, format_difference

from mergekit_swarm.testing import real_testbed

TESTBED = Path(__file__).resolve().parent / "testbed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", choices=("lora", "full"), default="lora")
    parser.add_argument("--objective", default="subtract")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--granularities", nargs="+", default=["model", "layer"])
    parser.add_argument("--search", nargs="+", default=["cma_es"], help="search baselines (compare's names)")
    parser.add_argument(
        "--dev-examples", type=int, default=real_testbed.DEV, help="search dev size (more: further examples appended)"
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the saved .json")
    args = parser.parse_args()
    if args.dev_examples < real_testbed.DEV:
        parser.error(f"--dev-examples must be at least the testbed's {real_testbed.DEV}")
    name = "real_seeds" if args.dev_examples == real_testbed.DEV else f"real_seeds_dev{args.dev_examples}"
    if args.report_only:
        report = json.loads((RESULTS / f"{name}.json").read_text())
        write_report(name, report, markdown(report))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergekit_swarm.commands.compare import CompareOptions, run_comparison
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.core.run_options import RunOptions, silence_library_progress_bars

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    silence_library_progress_bars()
    start = time.perf_counter()
    root = real_testbed.build(0, root=TESTBED / "cache" / "real-seed-0")
    recipe = load_recipe(root / "recipes" / args.pool / f"{args.objective}.yml")
    if args.dev_examples > real_testbed.DEV:
        recipe = _with_larger_dev(recipe, args.objective, args.dev_examples)
    runs, examples = [], []
    for seed in args.seeds:
        print(f"== {args.pool} / {args.objective}, seed {seed}", flush=True)
        out = TESTBED / "runs" / "real-seeds" / args.pool / args.objective / f"seed-{seed}"
        compare = CompareOptions(
            baselines=("best_expert",), search=tuple(args.search), granularities=tuple(args.granularities), seed=seed
        )
        board = run_comparison(recipe, out, RunOptions(overwrite=True, quiet=True), compare)
        scores = json.loads((out / "test_examples.json").read_text())["methods"]
        examples.append(scores)
        found = differences([scores], utility_of(recipe))
        for entry in board.entries:
            runs.append(
                {
                    "seed": seed,
                    "method": entry.method,
                    "title": entry.title,
                    "dev": entry.dev,
                    "test": entry.test,
                    "evaluations": entry.evaluations,
                    "seconds": round(entry.seconds, 1),
                    "versus_swarm": found.get(entry.method),
                }
            )
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "cell": {"testbed": "real", "pool": args.pool, "objective": args.objective},
        "seeds": args.seeds,
        "swarm": real_testbed.SWARM,
        "space": recipe.swarm.lora_space if args.pool == "lora" else None,
        "dev_examples": args.dev_examples,
        "test_examples": real_testbed.TEST,
        "runs": runs,
        "pooled": differences(examples, utility_of(recipe)),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    write_report(name, report, markdown(report))


def _dev_size(report: dict) -> str:
    size = report.get("dev_examples", real_testbed.DEV)
    if size == real_testbed.DEV:
        return str(size)
    return f"{size} ({real_testbed.DEV} of the testbed's dev, then {size - real_testbed.DEV} drawn after its test)"


def _with_larger_dev(recipe, objective: str, size: int):
    """`recipe` searching on its dev followed by `size` - 100 further examples (drawn after its test)."""
    from dataclasses import replace

    from mergekit_swarm.testing import toy
    from mergekit_swarm.utilities.data import load_examples

    dev = [{"prompt": e.prompt, "answer": e.answer} for e in load_examples(recipe.utility.dev)]
    path = TESTBED / "runs" / "real-seeds" / "data" / objective / f"dev-{size}.jsonl"
    toy.write_jsonl(path, dev + real_testbed.further_examples(objective, size - len(dev)))
    return replace(recipe, utility=recipe.utility.model_copy(update={"dev": path}))


def markdown(report: dict) -> str:
    cell, runs = report["cell"], report["runs"]
    lines = header(f"A real-model cell over search seeds: {cell['pool']} / {cell['objective']}", report)
    lines += [
        f"SmolLM2-135M-Instruct testbed (`mergekit_swarm.testing.real_testbed`, built from seed 0 on this machine), "
        f"{cell['pool']} pool" + (f" in {report['space']} space" if report["space"] else "") + f", swarm settings "
        f"{report['swarm']}, search baselines at the swarm's budget, {_dev_size(report)} dev and {report['test_examples']} "
        "test examples; search "
        f"seeds {report['seeds']}; total {report['total_seconds'] / 60:.1f} min. **swarm − method**: the default swarm's "
        "(granularity `model`) test utility minus the method's, paired bootstrap 95% interval over the test examples "
        "(pooled: over the seeds' runs side by side); **win** / **loss** when it excludes 0.",
        "",
        "| method | seed | dev | test | swarm − method [95% CI] | evaluations |",
        "|---|---:|---:|---:|---|---:|",
    ]
    # a method's title may lose its space where its winner is an expert: one title per method, the longest
    titles = {r["method"]: max((q["title"] for q in runs if q["method"] == r["method"]), key=len) for r in runs}
    for r in sorted(runs, key=lambda r: (r["method"] != SWARM, r["method"], r["seed"])):
        lines.append(
            f"| {titles[r['method']]} | {r['seed']} | {r['dev']:.3f} | {r['test']:.3f} | "
            f"{format_difference(r['versus_swarm'])} | {r['evaluations']} |"
        )
    lines += ["", "Over all seeds:", "", "| method | mean dev | mean test | swarm − method, pooled [95% CI] |"]
    lines += ["|---|---:|---:|---|"]
    for method in dict.fromkeys(r["method"] for r in runs):
        items = [r for r in runs if r["method"] == method]
        lines.append(
            f"| {titles[method]} | {statistics.mean(r['dev'] for r in items):.3f} | "
            f"{statistics.mean(r['test'] for r in items):.3f} | {format_difference(report['pooled'].get(method))} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
