"""The quality table on a real pretrained instruct LLM: SmolLM2-135M-Instruct and its fine-tuned experts.

    python benchmarks/real_quality.py            # the table sized for ~2 h on 2 CPU cores: LoRA pool, 2 objectives
    python benchmarks/real_quality.py --resume   # only the cells the saved report lacks
    python benchmarks/real_quality.py --all      # every objective of both pools (~12 cells, ~14 h on 2 CPU cores)

The same table as `quality.py` (paired bootstrap intervals, wins/ties/losses, budget curves,
correctness emergence), on `mergekit_swarm.testing.real_testbed`: per cell, `mergekit-swarm compare`
with every one-shot baseline and random search, LoraHub and CMA-ES at the swarm's budget. LoRA cells
run the swarm, the soups and the search baselines in the recipe's LoRA space (`--space`, default
update) and the swarm once more in the other space, as its own row. Also the paper's weak-to-strong
view: where the particle that started as the weakest expert ends (its best dev utility and rank
among the particles' personal bests). By default sized for about 2 hours on 2 CPU cores (what was cut is
written in the report): the LoRA pool on an even mix of two experts' skills and on a skill no expert
was trained on. Results in benchmarks/results/real_quality.{json,md} and real_quality_budget.png
(`--all`: real_quality_all.*).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from lib.common import RESULTS, command, header, machine, versions, write_report
from lib.quality_stats import plot_budget, utility_of
from lib.quality_table import SWARM, aggregate, budget_curves, cell_key, differences, format_difference, format_value, summary

from mergekit_swarm.testing import real_testbed

TESTBED = Path(__file__).resolve().parent / "testbed"
OBJECTIVES = ("add", "mix_add_join", "mix_digits_join", "subtract", "multitask", "judge")
SIZED_OBJECTIVES = ("mix_add_join", "subtract")  # the default table: a mixture, an unseen skill
CUTS = (
    "the LoRA pool only, on 2 of the testbed's objectives (`--all`: every objective of both pools); "
    "one testbed and one search seed (the toy table has two of each); no 3x-iterations swarm row; the swarm at "
    f"{real_testbed.SWARM} (the paper's budget, 20 particles, up to 50 iterations, 200 dev examples, is for a GPU); "
    f"{real_testbed.DEV} dev and {real_testbed.TEST} test examples per objective; {real_testbed.GENERATION['max_new_tokens']} "
    "new tokens per reply"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every objective of both pools (~14 h on 2 CPU cores)")
    parser.add_argument("--objectives", nargs="+", default=None)
    parser.add_argument("--pools", nargs="+", default=None, choices=("lora", "full"))
    parser.add_argument("--space", choices=("update", "factor"), default="update", help="LoRA space of the main rows")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md and plot from the saved .json")
    parser.add_argument(
        "--resume", action="store_true", help="keep the cells the saved .json measured with the same settings; run the rest"
    )
    args = parser.parse_args()
    name = "real_quality_all" if args.all else "real_quality"
    if args.report_only:
        report = json.loads((RESULTS / f"{name}.json").read_text())
        plot_budget(budget_curves(report["runs"]), RESULTS / f"{name}_budget.png")
        write_report(name, report, markdown(report, f"{name}_budget.png"))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergekit_swarm.core.run_options import silence_library_progress_bars

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    silence_library_progress_bars()
    objectives = tuple(args.objectives or (OBJECTIVES if args.all else SIZED_OBJECTIVES))
    pools = tuple(args.pools or (("lora", "full") if args.all else ("lora",)))
    start = time.perf_counter()
    root = real_testbed.build(0, root=TESTBED / "cache" / "real-seed-0")
    build_seconds = time.perf_counter() - start
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "all": args.all,
        "testbeds": ["real (SmolLM2-135M-Instruct)"],
        "seeds": [0],
        "granularities": ["model"],
        "space": args.space,
        "swarm": real_testbed.SWARM,
        "test_examples": real_testbed.TEST,
        "cuts": CUTS,
        "build_seconds": round(build_seconds, 1),
    }
    runs, cells, weak = _kept_cells(RESULTS / f"{name}.json", report) if args.resume else ([], [], [])
    for pool in pools:
        for objective in objectives:
            cell = {"testbed": "real", "pool": pool, "objective": objective}
            if any(cell_key(c) == cell_key(cell) for c in cells):
                print(f"== {cell}: kept from the saved report", flush=True)
                continue
            print(f"== {cell}", flush=True)
            cell_start = time.perf_counter()
            found, examples, weakest = _cell_runs(root, pool, objective, args.space)
            runs += [{**cell, **entry} for entry in found]
            weak.append({**cell, **weakest})
            scored = differences([examples], utility_of(_recipe(root, pool, objective)))
            cells.append({**cell, "differences": scored, "seconds": round(time.perf_counter() - cell_start, 1)})
            report.update(total_seconds=round(sum(c["seconds"] for c in cells) + build_seconds, 1), rows=aggregate(runs))
            report.update(cells=cells, weak_to_strong=weak, runs=runs)
            (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")  # a cell at a time: --report-only
    plot_budget(budget_curves(runs), RESULTS / f"{name}_budget.png")
    write_report(name, report, markdown(report, f"{name}_budget.png"))


SETTINGS = ("all", "space", "swarm", "test_examples", "cuts", "versions")


def _kept_cells(saved: Path, report: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """The runs, cells and weak-to-strong rows of a saved report measured with the same settings (`--resume`)."""
    if not saved.exists():
        return [], [], []
    old = json.loads(saved.read_text())
    changed = [key for key in SETTINGS if old.get(key) != report[key]]
    if changed:
        print(f"--resume: {saved.name} was measured with other {', '.join(changed)}; measuring every cell again")
        return [], [], []
    return old.get("runs", []), old.get("cells", []), old.get("weak_to_strong", [])


def _recipe(root: Path, pool: str, objective: str, space: str | None = None):
    from mergekit_swarm.config import load_recipe

    recipe = load_recipe(root / "recipes" / pool / f"{objective}.yml")
    if space is None or pool != "lora":
        return recipe
    from dataclasses import replace

    return replace(recipe, swarm=recipe.swarm.model_copy(update={"lora_space": space}))


def _cell_runs(root: Path, pool: str, objective: str, space: str) -> tuple[list[dict], dict, dict]:
    """Every method of one cell (LoRA: the swarm in the other space too); per-example test scores; weak-to-strong."""
    from mergekit_swarm.commands.compare import SEARCH_BASELINES, CompareOptions, run_comparison
    from mergekit_swarm.core.run_options import RunOptions

    out = TESTBED / "runs" / "real" / pool / objective
    options = RunOptions(overwrite=True, quiet=False)  # progress per method: a cell takes most of an hour
    board = run_comparison(_recipe(root, pool, objective, space), out / space, options, CompareOptions(search=SEARCH_BASELINES))
    entries = [dict(entry.__dict__) for entry in board.entries]
    examples = json.loads((out / space / "test_examples.json").read_text())["methods"]
    if pool == "lora":
        other = "factor" if space == "update" else "update"
        extra = run_comparison(_recipe(root, pool, objective, other), out / other, options, CompareOptions(baselines=()))
        for entry in extra.entries:  # the swarm in the other space, as a row of its own (named so even where it ends
            title = entry.title if entry.title.endswith(f"{other} space") else f"{entry.title}, {other} space"  # at an expert)
            entries.append({**entry.__dict__, "method": f"{entry.method}_{other}", "title": title})
        for method, scores in json.loads((out / other / "test_examples.json").read_text())["methods"].items():
            examples[f"{method}_{other}"] = scores
    return entries, examples, weak_to_strong(out / space / f"{SWARM}" / "swarm_history.jsonl", board.experts)


def weak_to_strong(history: Path, experts: list[str]) -> dict:
    """The paper's view: particle k started as expert k; where does the weakest expert's particle end?"""
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    start = {r["particle"]: r["utility"] for r in rows if r["iteration"] == 0 and r["particle"] < len(experts)}
    best: dict[int, float] = {}
    for r in rows:
        if r["utility"] is not None:
            best[r["particle"]] = max(best.get(r["particle"], -1e9), r["utility"])
    weakest = min(start, key=lambda k: start[k] if start[k] is not None else -1e9)
    ranked = sorted(best.values(), reverse=True)
    return {
        "weakest_expert": experts[weakest],
        "start_dev": start[weakest],
        "best_dev": best[weakest],
        "rank_among_particles": ranked.index(best[weakest]) + 1,
        "particles": len(best),
        "global_best_dev": ranked[0],
    }


def markdown(report: dict, plot: str) -> str:
    rows, cells = report["rows"], {cell_key(c): c["differences"] for c in report["cells"]}
    lines = header("Search quality on a real pretrained LLM (SmolLM2-135M-Instruct)", report)
    lines += [
        f"Real testbed (`mergekit_swarm.testing.real_testbed`): LoRA pool {', '.join(real_testbed.LORA_EXPERTS)}; full pool "
        f"{', '.join(real_testbed.FULL_EXPERTS)}; swarm settings {report['swarm']}; LoRA rows in **{report['space']} space** "
        "unless the title says otherwise (the swarm in the other space is its own row); search baselines at the swarm's "
        f"budget. {report['test_examples']} test examples per objective. Build {report['build_seconds']:.0f} s, total "
        f"{report['total_seconds'] / 60:.1f} min. Cut to fit about 2 hours on 2 CPU cores: {report['cuts']}. "
        "**swarm − method**: the default swarm's test utility minus the method's, paired bootstrap 95% interval over "
        "the test examples; **win** / **loss** when it excludes 0. **new / lost**: test examples solved that no expert "
        "solves / that some expert solves but the method misses.",
        "",
        *([report["note"], ""] if report.get("note") else []),
    ]
    lines += summary(rows, cells)
    lines += [
        "",
        "## Weak to strong",
        "",
        "| cell | weakest expert | its dev at start | its best dev | rank of its best among particles |",
    ]
    lines += ["|---|---|---:|---:|---:|"]
    for w in report["weak_to_strong"]:
        lines.append(
            f"| {w['pool']} / {w['objective']} | {w['weakest_expert']} | {w['start_dev']:.3f} | {w['best_dev']:.3f} | "
            f"{w['rank_among_particles']} of {w['particles']} |"
        )
    lines += ["", f"![budget curves]({plot})", "", "## Every cell", ""]
    for key in dict.fromkeys(cell_key(r) for r in rows):
        part = sorted((r for r in rows if cell_key(r) == key), key=lambda r: -(r["dev"] if r["dev"] is not None else -1e9))
        lines += [
            f"### {key[1]} / {key[2]}",
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
