"""Racing (`swarm.racing`): dev examples scored, wall time and quality per whole run, off vs exact vs confident.

    python benchmarks/racing.py            # LoRA and full pools, the objectives whose utility races
    python benchmarks/racing.py --quick    # LoRA pool, 2 objectives
    python benchmarks/racing.py --real     # the real testbed (SmolLM2-135M-Instruct): off, exact, confident
    python benchmarks/racing.py --objectives reward judge nll --resume   # add cells to the saved report

On the toy testbed (`mergekit_swarm.testing.testbed`, seed 0), each cell runs the same search
(`run_swarm`, the testbed's budget) with racing off, `racing: exact` in 4 and 8 slices and
`racing: confident`, and racing off and confident at twice the iterations, with the utility's
`batch_size` lowered to 25 in every run so that dev (200 examples) has 8 batches to cut into slices
(a slice is whole batches). Exact racing changes no decision: its winners must equal racing off's,
and the report checks it. `reward`, `judge` and `nll` (the `add` objective's data scored by
log-likelihood) race with `confident` only (their exact rows would be racing off again): they run off
and confident. LoRA pools in factor space (the default when the table
was first measured). The report ends with the most any racing could save (`ceiling`), from racing
off's share of evaluations that raise a personal best. Results in benchmarks/results/racing.{json,md}.

`--real`: the real testbed (`mergekit_swarm.testing.real_testbed`, seed 0), its LoRA pool in update
space on the even mix of add and join, racing off, exact in 4 slices and confident in 8 at its
budget, `batch_size` 25 (dev: 100 examples), test gain on the first 100 of the 500 test examples.
Results in racing_real.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from unittest import mock

from lib.common import RESULTS, command, header, machine, versions, write_report

from mergekit_swarm.testing import real_testbed, testbed

TESTBED = Path(__file__).resolve().parent / "testbed"
OBJECTIVES = ("add", "reverse_shift", "mix_reverse_add", "mix_sort_shift_count", "multitask", "reward", "judge", "nll")
CONFIDENT_ONLY = ("reward", "judge", "nll")  # a reward model, a judge, a log-likelihood: `confident` only
DERIVED = {"nll": ("add", "nll")}  # objective: (the testbed recipe whose data it scores, the utility type)
QUICK_OBJECTIVES = ("add", "mix_reverse_add")
CONFIGS = {
    "off": {"racing": "off"},
    "exact, 4 slices": {"racing": "exact"},
    "exact, 8 slices": {"racing": "exact", "racing_slices": 8},
    "confident, 8 slices": {"racing": "confident", "racing_slices": 8},
    "off, 2x iterations": {"racing": "off", "max_iterations": 16, "patience": 10},
    "confident, 8 slices, 2x iterations": {"racing": "confident", "racing_slices": 8, "max_iterations": 16, "patience": 10},
}
REAL_OBJECTIVES = ("mix_add_join",)
REAL_CONFIGS = {name: CONFIGS[name] for name in ("off", "exact, 4 slices", "confident, 8 slices")}
REAL_TEST = 100  # test examples the real runs report on (of 500): each run scores the experts on test again
REAL_SPACE = {"lora_space": "update"}  # what the real table's main rows and the SmolLM2 example use
TOY_SPACE = {"lora_space": "factor"}  # the toy table's LoRA cells: the default when its first cells ran
BATCH = 25


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LoRA pool, 2 objectives")
    parser.add_argument("--pools", nargs="+", default=None, choices=("lora", "full"))
    parser.add_argument("--real", action="store_true", help="the real testbed (SmolLM2), LoRA pool, 1 objective")
    parser.add_argument("--objectives", nargs="+", default=None, choices=OBJECTIVES)
    parser.add_argument("--resume", action="store_true", help="keep the saved report's runs; run the cells it lacks")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the saved .json")
    args = parser.parse_args()
    name = "racing_quick" if args.quick else "racing_real" if args.real else "racing"
    if args.report_only:
        report = json.loads((RESULTS / f"{name}.json").read_text())
        configs, space = (REAL_CONFIGS, REAL_SPACE) if args.real else (CONFIGS, TOY_SPACE)
        for r in report["runs"]:  # runs measured before the column existed, where their history is still on disk
            history = run_folder(r["pool"], r["objective"], {**space, **configs[r["config"]]}) / "swarm_history.jsonl"
            if "improving" not in r and history.exists():
                r["improving"] = improving(history_rows(history))
        write_report(name, report, markdown(report))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergekit_swarm.core.run_options import silence_library_progress_bars

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    silence_library_progress_bars()
    objectives = args.objectives or (REAL_OBJECTIVES if args.real else QUICK_OBJECTIVES if args.quick else OBJECTIVES)
    pools = args.pools or (["lora"] if args.quick or args.real else ["lora", "full"])
    if args.real:
        root, configs, space = real_testbed.build(0, root=TESTBED / "cache" / "real-seed-0"), REAL_CONFIGS, REAL_SPACE
    else:
        root, configs, space = testbed.build(0, root=TESTBED / "cache" / "seed-0"), CONFIGS, TOY_SPACE
    saved = json.loads((RESULTS / f"{name}.json").read_text()) if args.resume and (RESULTS / f"{name}.json").exists() else {}
    start = time.perf_counter() - saved.get("total_seconds", 0.0)
    runs = saved.get("runs", [])
    done = {(r["pool"], r["objective"], r["config"]) for r in runs}
    for pool in pools:
        for objective in objectives:
            for config, overrides in configs.items():
                if (pool, objective, config) in done or (objective in CONFIDENT_ONLY and overrides["racing"] == "exact"):
                    continue
                measured = _run(root, pool, objective, {**space, **overrides}, REAL_TEST if args.real else None)
                runs.append({"pool": pool, "objective": objective, "config": config, **measured})
                print(runs[-1], flush=True)
    report = {
        # resumed: the cells kept came from the saved report's command
        "command": f"{saved['command']}, then {command()}" if saved else command(),
        "machine": machine(),
        "versions": versions(),
        "testbed": "real (SmolLM2-135M-Instruct), seed 0, update space" if args.real else "toy, seed 0, LoRA in factor space",
        "swarm": real_testbed.SWARM if args.real else testbed.SWARM,
        "batch_size": BATCH,
        "total_seconds": round(time.perf_counter() - start, 1),
        "runs": runs,
    }
    write_report(name, report, markdown(report))


def _run(root: Path, pool: str, objective: str, overrides: dict, test_examples: int | None = None) -> dict:
    from mergekit_swarm.commands.run import run_swarm
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.core.run_options import RunOptions
    from mergekit_swarm.utilities import validate_utility

    source, scored_by = DERIVED.get(objective, (objective, None))
    recipe = load_recipe(root / "recipes" / pool / f"{source}.yml")
    utility = recipe.utility
    if scored_by is not None:  # the same data scored by another utility
        utility = validate_utility({"type": scored_by, "dev": str(utility.dev), "test": str(utility.test)})
    if utility.type == "multitask":
        components = [
            c.model_copy(update={"utility": c.utility.model_copy(update={"batch_size": BATCH})}) for c in utility.components
        ]
        utility = utility.model_copy(update={"components": components})
    else:
        utility = utility.model_copy(update={"batch_size": BATCH})
    if test_examples is not None and utility.test is not None:  # the first examples of test, written apart
        lines = utility.test.read_text(encoding="utf-8").splitlines()[:test_examples]
        cut = TESTBED / "runs" / "racing" / pool / objective / f"test-{test_examples}.jsonl"
        cut.parent.mkdir(parents=True, exist_ok=True)
        cut.write_text("\n".join(lines) + "\n", encoding="utf-8")
        utility = utility.model_copy(update={"test": cut})
    recipe = dataclasses.replace(recipe, utility=utility, swarm=recipe.swarm.model_copy(update=overrides))
    out = run_folder(pool, objective, overrides)
    audit = StopAudit()
    began = time.perf_counter()
    with audit.installed():
        result = run_swarm(recipe, out, RunOptions(overwrite=True, quiet=True))
    seconds = time.perf_counter() - began - audit.seconds
    racing = result.racing or {}
    history = history_rows(out / "swarm_history.jsonl")
    return {
        "seconds": round(seconds, 1),
        "winner_dev": result.winner_dev,
        "winner_test": result.winner_test,
        "coefficients": result.coefficients,
        "iterations": result.iterations,
        "evaluations": result.evaluations,
        "examples_scored": racing.get("examples_scored"),
        "examples_in_full": racing.get("examples_in_full"),
        "saved": racing.get("saved", 0.0),
        "stopped": racing.get("stopped", 0),
        "finished_for_probes": racing.get("finished_for_probes", 0),
        "best_expert_test": max(t for t in result.expert_test or [0.0] if t is not None),
        "checked_stops": audit.checked,
        "wrong_stops": audit.wrong,
        "improving": improving(history),
    }


def run_folder(pool: str, objective: str, overrides: dict) -> Path:
    return TESTBED / "runs" / "racing" / pool / objective / "-".join(f"{k}={v}" for k, v in overrides.items())


def history_rows(history: Path) -> list[dict]:
    """The lines of a run's `swarm_history.jsonl`, one per evaluation."""
    return [json.loads(line) for line in history.read_text().splitlines() if line.strip()]


def improving(rows: list[dict]) -> float:
    """The share of evaluations after each particle's first that raised its personal best: racing can
    only save on the others (a stopped evaluation counts as not raising it)."""
    best: dict[int, float] = {}
    raised = later = 0
    for r in rows:
        if "finished_from" in r:  # a stopped evaluation scored to the end: counted when it ran
            continue
        particle, utility = r["particle"], r["utility"]
        if particle in best:
            later += 1
            raised += utility is not None and utility > best[particle]
        if utility is not None:
            best[particle] = max(best.get(particle, utility), utility)
    return raised / later if later else 0.0


class StopAudit:
    """Checks every stop racing makes: each stopped particle is scored to the end aside, after its
    iteration's evaluations (the search never sees it; its time is not the run's), and a stop is
    `wrong` where that full-dev utility would have beaten the personal best it raced against (exact
    racing never has one; `confident` may). The checks' own scores are counted nowhere."""

    def __init__(self) -> None:
        self.checked = self.wrong = 0
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self):
        from mergekit_swarm.search.evaluator import LocalEvaluator

        evaluate = LocalEvaluator.evaluate

        def audited(evaluator, particles, split="dev", racing=None):
            results = list(evaluate(evaluator, particles, split, racing))  # the whole iteration, then the checks
            began = time.perf_counter()
            for particle, result, limit in zip(particles, results, racing.limits if racing else [None] * len(results)):
                if result.stopped is not None and limit is not None:
                    full = evaluator.finish([particle], [result], split)[0]
                    self.checked += 1
                    self.wrong += full.utility > limit.best
            self.seconds += time.perf_counter() - began
            yield from results

        with mock.patch.object(LocalEvaluator, "evaluate", audited):
            yield self


def markdown(report: dict) -> str:
    lines = header("Racing: examples scored and wall time per run, off vs exact vs confident", report)
    lines += [
        f"Testbed: {report.get('testbed', 'toy, seed 0')}; its budget ({report['swarm']}; `2x iterations`: "
        "twice the iterations and patience), utility "
        f"batch_size {report['batch_size']} in every run. `test gain`: winner minus best expert on test; `saved`: the share "
        "of dev examples not scored; `stopped`: evaluations stopped early, of which `finished`: scored to the end later for "
        "a stall probe step (`racing: exact` only), and `wrong`: the stops that would have beaten their personal best "
        "(the benchmark scores every stopped particle to the end aside to check it; that time is not the run's); "
        "`improving`: the share of evaluations after each particle's first that raised its personal best (racing can "
        "only save on the others); `same winner`: coefficients equal to racing off's, bit for bit.",
        "",
        "| pool | objective | racing | winner dev | test gain | examples scored | saved | stopped (finished, wrong) "
        "| improving | seconds | vs off | same winner |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    reference = {(r["pool"], r["objective"]): r for r in report["runs"] if r["config"] == "off"}

    def cell(r: dict) -> tuple[str, str]:
        return r["pool"], r["objective"]

    # examples one evaluation scores in full (a multitask: every component's), from the racing runs, which count them
    per_evaluation = {cell(r): r["examples_in_full"] // r["evaluations"] for r in report["runs"] if r["examples_in_full"]}
    order = {name: i for i, name in enumerate([*OBJECTIVES, *REAL_OBJECTIVES, *CONFIGS])}  # (cells resumed come last)
    for r in sorted(report["runs"], key=lambda r: (r["pool"] != "lora", order[r["objective"]], order[r["config"]])):
        off = reference[(r["pool"], r["objective"])]
        scored = r["examples_scored"] if r["examples_scored"] is not None else r["evaluations"] * per_evaluation[cell(r)]
        lines.append(
            f"| {r['pool']} | {r['objective']} | {r['config']} | {r['winner_dev']:.4f} "
            f"| {r['winner_test'] - r['best_expert_test']:+.4f} | {scored:,} | {r['saved']:.1%} "
            f"| {r['stopped']} ({r['finished_for_probes']}, {r['wrong_stops']}) "
            f"| {format(r['improving'], '.0%') if 'improving' in r else '-'} | {r['seconds']:.1f} "
            f"| {off['seconds'] / r['seconds']:.2f}x | {'yes' if r['coefficients'] == off['coefficients'] else 'no'} |"
        )
    lines += [
        "",
        "Per configuration, over the cells (the mean test gain over the shares of examples right only: "
        "reward, judge and nll have scales of their own):",
        "",
    ]
    lines += [
        "| racing | cells | mean saved | mean test gain | same winner as off | wrong stops / checked |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config in dict.fromkeys(r["config"] for r in report["runs"]):
        rows = [r for r in report["runs"] if r["config"] == config]
        same = sum(r["coefficients"] == reference[(r["pool"], r["objective"])]["coefficients"] for r in rows)
        shares = [r["winner_test"] - r["best_expert_test"] for r in rows if r["objective"] not in CONFIDENT_ONLY]
        gain = f"{sum(shares) / len(shares):+.4f}" if shares else "-"
        wrong, checked = sum(r["wrong_stops"] for r in rows), sum(r.get("checked_stops", r["finished_for_probes"]) for r in rows)
        saved = sum(r["saved"] for r in rows) / len(rows)
        lines.append(f"| {config} | {len(rows)} | {saved:.1%} | {gain} | {same}/{len(rows)} | {wrong}/{checked} |")
    particles = report["swarm"]["particles"]
    ceilings = {
        config: [ceiling(r, particles, 8) for r in report["runs"] if r["config"] == config and "improving" in r]
        for config in ("off", "off, 2x iterations")
    }
    lines += [
        "",
        "The most any racing could save (`ceiling`): it may only stop an evaluation that will not raise its personal best, "
        "and only after a first slice; a perfect racer in 8 slices that stopped every such evaluation after its first "
        "slice, and no other, would save at most "
        + ", ".join(
            f"{sum(c) / len(c):.1%} ({min(c):.0%}-{max(c):.0%}) at {'the budget' if config == 'off' else 'twice the iterations'}"
            for config, c in ceilings.items()
            if c
        )
        + " (mean (range) over the cells, from racing off's `improving` share).",
    ]
    return "\n".join(lines) + "\n"


def ceiling(run: dict, particles: int, slices: int) -> float:
    """The share of dev examples a perfect racer in `slices` slices could save in `run`: every evaluation after
    each particle's first that did not raise its personal best (`improving`), stopped after one slice."""
    later = run["evaluations"] - particles
    return (1 - run["improving"]) * later / run["evaluations"] * (1 - 1 / slices)


if __name__ == "__main__":
    main()
