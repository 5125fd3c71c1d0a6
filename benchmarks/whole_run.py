"""Whole `mergekit-swarm` runs side by side: one particle at a time, all of an iteration in one batch, `auto`.

    python benchmarks/whole_run.py                         # the quickstart and the SmolLM2 example, 3 passes
    python benchmarks/whole_run.py --examples quickstart --passes 5

For each example, the ways (`evaluation.particles_per_batch`: 1, every particle of an iteration, and
`auto`, the default, which on a CPU batches what fits in a budget of the model's size) run in turn
within each pass, as whole CLI runs (start-up, search, test report and writing included). Reported per
way: the wall time of the whole run and the search loop's seconds per iteration from the run's own
`swarm_result.json` (`timing`), median and range over the passes, the particles its batches held, its
peak memory, and whether every way found the same winner with the same history of utilities. Builds
the SmolLM2 example first if needed (~6 minutes). Writes benchmarks/results/whole_run.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from lib.common import ROOT, command, header, machine, run_sampled, versions, write_report

EXAMPLES = {
    # name: (recipe, overrides of its swarm settings: long enough that start-up does not dominate)
    "quickstart": (ROOT / "examples" / "quickstart" / "swarm.yml", {"max_iterations": 30}),
    "smollm2": (ROOT / "examples" / "smollm2" / "swarm.yml", {"max_iterations": 3}),
}
WAYS = {"one at a time": 1, "all in one batch": "all", "auto": "auto"}  # "all": the example's particles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=list(EXAMPLES), choices=list(EXAMPLES))
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    _build(args.examples)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.examples:
            runs: dict[str, list[dict]] = {way: [] for way in WAYS}
            for p in range(args.passes):
                ways = list(WAYS) if p % 2 == 0 else list(reversed(WAYS))  # neither way always runs first
                for way in ways:
                    print(f"{name}, pass {p + 1}/{args.passes}: {way}", flush=True)
                    runs[way].append(_run(name, WAYS[way], Path(tmp) / f"{name}-{p}-{WAYS[way]}"))
            rows += _summary(name, runs)
    report = {"command": command(), "machine": machine(), "versions": versions(), "passes": args.passes, "rows": rows}
    write_report("whole_run", report, markdown(report))


def _build(examples: list[str]) -> None:
    for name in examples:
        if name == "smollm2":
            from mergekit_swarm.testing.real_testbed import build_example

            build_example(EXAMPLES[name][0].parent)
        else:
            from mergekit_swarm.testing.quickstart import build

            build(EXAMPLES[name][0].parent, quiet=True)


def _run(name: str, way: int | str, folder: Path) -> dict:
    """One whole CLI run of the example `name` with `particles_per_batch: way`; its wall time and results."""
    source, overrides = EXAMPLES[name]
    recipe = _absolute(yaml.safe_load(source.read_text()), source.parent)
    recipe["swarm"].update(overrides)
    recipe.setdefault("evaluation", {})["particles_per_batch"] = recipe["swarm"]["particles"] if way == "all" else way
    folder.mkdir(parents=True)
    path = folder / "swarm.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    measured = run_sampled([sys.executable, "-m", "mergekit_swarm", str(path), str(folder / "out"), "--quiet"])
    result = json.loads((folder / "out" / "swarm_result.json").read_text())
    history = [json.loads(line) for line in (folder / "out" / "swarm_history.jsonl").read_text().splitlines()]
    return {
        "wall_seconds": measured["seconds"],
        "peak_anon_bytes": measured["peak_anon_bytes"],
        "search_seconds": result["timing"]["search_seconds"],
        "evaluation_seconds": result["timing"]["evaluation_seconds"],
        "iterations": result["iterations"],
        "winner_dev": result["winner_dev"],
        "utilities": [row["utility"] for row in history],
        "particles_per_batch": max(row.get("shared_by") or 1 for row in history),
    }


def _absolute(recipe: dict, folder: Path) -> dict:
    """The recipe with its relative model and data paths made absolute (it is run from another folder)."""
    for model in recipe["models"]:
        model["model"] = str((folder / model["model"]).resolve())
    recipe["base_model"] = str((folder / recipe["base_model"]).resolve())
    for split in ("dev", "test"):
        if split in recipe["utility"]:
            recipe["utility"][split] = str((folder / recipe["utility"][split]).resolve())
    return recipe


def _summary(name: str, runs: dict[str, list[dict]]) -> list[dict]:
    first = runs[next(iter(WAYS))]  # one at a time: the reference
    reference = first[0]
    one_at_a_time = statistics.median(r["search_seconds"] / (r["iterations"] + 1) for r in first)
    rows = []
    for way, passes in runs.items():
        per_iteration = [r["search_seconds"] / (r["iterations"] + 1) for r in passes]  # the first evaluation round too
        wall = [r["wall_seconds"] for r in passes]
        rows.append(
            {
                "example": name,
                "way": way,
                "iterations": passes[0]["iterations"],
                "wall_seconds": _spread(wall),
                "seconds_per_iteration": _spread(per_iteration),
                "peak_anon_gb": round(max(r["peak_anon_bytes"] for r in passes) / 1e9, 2),
                "particles_per_batch": max(r["particles_per_batch"] for r in passes),
                "evaluation_share": round(statistics.median(r["evaluation_seconds"] / r["search_seconds"] for r in passes), 3),
                "speed_up": round(one_at_a_time / statistics.median(per_iteration), 2),
                "same_results": all(
                    r["utilities"] == reference["utilities"] and r["winner_dev"] == reference["winner_dev"] for r in passes
                ),
            }
        )
    return rows


def _spread(values: list[float]) -> dict:
    middle = statistics.median(values)
    return {
        "median": round(middle, 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "spread": round((max(values) - min(values)) / middle, 3),
    }


def markdown(report: dict) -> str:
    lines = header("Whole runs: one particle at a time, all in one batch, `auto`", report)
    lines += [
        f"Whole `mergekit-swarm` CLI runs, {_passes(report['passes'])}, the ways in turn within each pass (alternating "
        "which goes first). **s / iteration**: the search loop's time (`swarm_result.json` `timing`) over its "
        "evaluation rounds (the first round and each iteration); **spread**: (max - min) / median over the passes; "
        "**speed-up**: one at a time's median s / iteration over the way's; **same results**: the same utility in "
        "every history line and the same winner as the first one-at-a-time run; **peak memory**: the most anonymous "
        "memory any pass's run allocated (sampled every 20 ms; the memory-mapped experts are file-backed, not counted); "
        "**per batch**: the most particles one batch held.",
        "",
        "| example | way | iterations | whole run, s (median, range) | s / iteration (median, range) | spread | "
        "share scoring | per batch | peak memory | speed-up | same results |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        wall, per = r["wall_seconds"], r["seconds_per_iteration"]
        lines.append(
            f"| {r['example']} | {r['way']} | {r['iterations']} | {wall['median']:.1f} ({wall['min']:.1f}-{wall['max']:.1f}) | "
            f"{per['median']:.3f} ({per['min']:.3f}-{per['max']:.3f}) | ±{per['spread'] * 50:.0f}% | "
            f"{r['evaluation_share']:.0%} | {r.get('particles_per_batch', '-')} | {r['peak_anon_gb']:.2f} GB | "
            f"**{r['speed_up']:.2f}x** | "
            f"{'yes' if r['same_results'] else 'no'} |"
        )
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def _passes(passes: int | dict[str, int]) -> str:
    """How many passes: one count, or one per example where the rows of two runs were joined."""
    if isinstance(passes, int):
        return f"{passes} passes"
    return ", ".join(f"{count} passes for {name}" for name, count in passes.items())


if __name__ == "__main__":
    main()
