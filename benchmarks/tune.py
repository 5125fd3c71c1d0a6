"""Choose the swarm's defaults on the testbed's dev splits only (test is never read here).

    python benchmarks/tune.py                    # every objective, both pools, testbeds 0 and 1
    python benchmarks/tune.py --quick            # LoRA pool, testbed 0, search seed 0
    python benchmarks/tune.py --round velocity   # another set of candidates (ROUNDS)
    python benchmarks/tune.py --round spaces --pools lora --testbed-seeds 1 --resume   # add testbed 1 to the saved round
    python benchmarks/tune.py --round spaces --real    # the real testbed (SmolLM2-135M-Instruct), LoRA pool

Each dev file is cut in two fixed parts (`dev_part`, 75% / 25%): the search and every candidate
setting see the first ("dev A"); the second ("dev B") is scored once per candidate's winner and
is what tells the candidates apart: held-out evidence, without touching test. The candidates
run on one resident model per objective and seed (`compare`'s scorer), granularity model unless a candidate sets another, with
the testbed's budget. Writes `benchmarks/results/tune.{json,md}` (round `start`; other rounds
`tune_<round>.*`, and `*_quick.*` with `--quick`).

With `--real`, the candidates run on the real testbed (`mergekit_swarm.testing.real_testbed`, seed 0,
LoRA pool, `real_quality.py`'s two objectives unless `--objectives` says others): the search sees
the objective's whole dev (100 examples) and dev B is 200 further examples of the same mix, drawn
after dev and test with the same seed (disjoint from both). Writes `tune_<round>_real.*`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

from lib.common import RESULTS, command, header, machine, versions, write_report
from quality import OBJECTIVES, QUICK_OBJECTIVES, TESTBED

from mergekit_swarm.testing import real_testbed, testbed

# round: {name: swarm settings over the defaults}; the first candidate is the reference. The rounds before
# `probes` ran when the swarm had no probes: they keep `stall_probes: 0` (their reports predate the key).
_NO_PROBES = {"stall_probes": 0}
ROUNDS = {
    # how the swarm starts, and the holdout guard (results/tune.md)
    "start": {
        "experts (the paper's start)": {**_NO_PROBES, "initial": "experts"},
        "initial: merges": {**_NO_PROBES, "initial": "merges"},
        "holdout 0.25 (5 candidates)": {**_NO_PROBES, "initial": "experts", "holdout": 0.25},
        "initial: merges + holdout 0.25": {**_NO_PROBES, "initial": "merges", "holdout": 0.25},
    },
    # bolder moves where the swarm stalls at the best expert (results/tune_velocity.md)
    "velocity": {
        "defaults (initial: merges)": _NO_PROBES,
        "official argparse velocity": {
            **_NO_PROBES,
            "inertia": 0.4,
            "cognitive": 0.3,
            "social": 0.3,
            "repel": 0.3,
            "step_length": 1.0,
        },
        "step_length 1.0": {**_NO_PROBES, "step_length": 1.0},
    },
    # where the swarm stalls: finer groups (CMA-ES, per layer, moved there) and a looser swarm
    # (results/tune_explore.md)
    "explore": {
        "defaults (granularity model)": _NO_PROBES,
        "granularity: layer": {**_NO_PROBES, "granularity": "layer"},
        "inertia 0.4, social 0.2": {**_NO_PROBES, "inertia": 0.4, "social": 0.2},
    },
    # local search where the swarm stalls: probes near the global best (results/tune_probes.md)
    "probes": {
        "no probes": {"stall_probes": 0},
        "3 probes, radius 0.1": {"stall_probes": 0.3, "probe_radius": 0.1},
        "5 probes, radius 0.1": {"stall_probes": 0.5, "probe_radius": 0.1},
        "5 probes, radius 0.25": {"stall_probes": 0.5, "probe_radius": 0.25},
    },
    # LoRA pools: mix the factors (the paper) or the experts' updates (results/tune_spaces.md; --pools lora)
    "spaces": {
        "factor space (the paper)": {"lora_space": "factor"},
        "update space": {"lora_space": "update"},
        "update space, base as an expert (free total)": {"lora_space": "update", "base_as_expert": True},
    },
}
HOLDOUT = 0.25  # the candidates' recipe carries it so that the scorer has the search/holdout parts
REAL_OBJECTIVES = ("mix_add_join", "subtract")  # real_quality.py's default table
REAL_DEV_B = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LoRA pool, 3 objectives, testbed 0, search seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="search seeds (default 0 1; quick: 0)")
    parser.add_argument("--testbed-seeds", type=int, nargs="+", default=None, help="default 0 1 (quick: 0)")
    parser.add_argument("--pools", nargs="+", default=None, choices=("lora", "full"))
    parser.add_argument("--round", default="start", choices=tuple(ROUNDS), help="which candidates (default: start)")
    parser.add_argument("--real", action="store_true", help="the real testbed (SmolLM2), LoRA pool, search seed 0")
    parser.add_argument("--objectives", nargs="+", default=None, help="--real: default mix_add_join subtract")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the saved report's runs (same round, candidates and swarm) and run only the cells it lacks, "
        "e.g. another --testbed-seeds; the report then covers both",
    )
    args = parser.parse_args()
    candidates = ROUNDS[args.round]
    name = "tune" if args.round == "start" else f"tune_{args.round}"
    name = f"{name}_quick" if args.quick else f"{name}_real" if args.real else name
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mergekit_swarm.core.run_options import silence_library_progress_bars

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    silence_library_progress_bars()
    quick = args.quick or args.real
    seeds = args.seeds or ([0] if quick else [0, 1])
    testbeds = ["real"] if args.real else args.testbed_seeds or ([0] if quick else [0, 1])
    pools = tuple(args.pools or (("lora",) if quick else ("lora", "full")))
    objectives = tuple(args.objectives or (REAL_OBJECTIVES if args.real else QUICK_OBJECTIVES if quick else OBJECTIVES))
    swarm = real_testbed.SWARM if args.real else testbed.SWARM
    start = time.perf_counter()
    saved = _saved(name, candidates, swarm) if args.resume else {}
    runs = list(saved.get("runs", []))
    measured = {(r["testbed"], r["pool"], r["objective"], r["seed"]) for r in runs}
    for testbed_seed in testbeds:
        if testbed_seed == "real":
            runs += _real_cells(pools, objectives, seeds, candidates, measured)
            continue
        root = testbed.build(testbed_seed, root=TESTBED / "cache" / f"seed-{testbed_seed}", quiet=True)
        data = TESTBED / "runs" / "tune" / f"testbed-{testbed_seed}" / "data"
        for pool in pools:
            for objective in objectives:
                recipe = _on_dev_parts(root / "recipes" / pool / f"{objective}.yml", data / objective)
                for seed in seeds:
                    if (testbed_seed, pool, objective, seed) in measured:
                        continue
                    work = TESTBED / "runs" / "tune" / f"testbed-{testbed_seed}" / pool / objective / f"seed-{seed}"
                    for name, dev, unseen, evaluations in tune_cell(recipe, seed, work, candidates):
                        cell = {"testbed": testbed_seed, "pool": pool, "objective": objective, "seed": seed}
                        runs.append({**cell, "setting": name, "dev_a": dev, "dev_b": unseen, "evaluations": evaluations})
                        print(f"{cell} {name}: dev A {dev:.4f}, dev B {unseen:.4f} ({evaluations} evaluations)", flush=True)
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "round": args.round,
        "candidates": candidates,
        "seeds": sorted({*seeds, *saved.get("seeds", [])}),
        "testbeds": sorted({*testbeds, *saved.get("testbeds", [])}),
        "pools": [pool for pool in ("lora", "full") if pool in {*pools, *saved.get("pools", [])}],
        "objectives": objectives,
        "swarm": swarm,
        "total_seconds": round(time.perf_counter() - start + saved.get("total_seconds", 0.0), 1),
        "runs": runs,
        **({"note": saved["note"]} if "note" in saved else {}),
    }
    write_report(name, report, markdown(report))


def _saved(name: str, candidates: dict, swarm: dict) -> dict:
    """The saved report `name` (`--resume`), if it was measured with the same candidates and swarm settings."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    if old.get("candidates") != candidates or old.get("swarm") != swarm:
        print(f"--resume: {path.name} was measured with other candidates or swarm settings; measuring every cell again")
        return {}
    return old


def _on_dev_parts(recipe_file: Path, data: Path):
    """The testbed recipe with each dev file replaced by its 75% part (dev) and its 25% part (test)."""
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.testing import toy
    from mergekit_swarm.utilities.base import dev_part

    recipe = load_recipe(recipe_file)

    def cut(utility, name: str):
        rows = [json.loads(line) for line in utility.dev.read_text(encoding="utf-8").splitlines() if line.strip()]
        paths = {}
        for part, split in (("search", "dev"), ("holdout", "test")):
            paths[split] = data / name / f"{split}.jsonl"
            toy.write_jsonl(paths[split], dev_part(rows, HOLDOUT, part, utility.dev))
        return utility.model_copy(update=paths)

    utility = recipe.utility
    if utility.type == "multitask":
        components = [c.model_copy(update={"utility": cut(c.utility, c.name)}) for c in utility.components]
        utility = utility.model_copy(update={"components": components})
    else:
        utility = cut(utility, "data")
    return dataclasses.replace(recipe, utility=utility, swarm=recipe.swarm.model_copy(update={"holdout": HOLDOUT}))


def _real_cells(pools, objectives, seeds, candidates: dict, measured: set) -> list[dict]:
    """`--real`: every candidate on the real testbed's objectives, judged on 200 further dev examples (dev B)."""
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.testing import toy

    root = real_testbed.build(0, root=TESTBED / "cache" / "real-seed-0")
    runs = []
    for pool in pools:
        for objective in objectives:
            dev_b = TESTBED / "runs" / "tune" / "real" / "data" / objective / "dev_b.jsonl"
            toy.write_jsonl(dev_b, real_testbed.further_examples(objective, REAL_DEV_B))
            recipe = load_recipe(root / "recipes" / pool / f"{objective}.yml")
            utility = recipe.utility.model_copy(update={"test": dev_b})
            swarm = recipe.swarm.model_copy(update={"holdout": HOLDOUT})
            recipe = dataclasses.replace(recipe, utility=utility, swarm=swarm)
            for seed in seeds:
                if ("real", pool, objective, seed) in measured:
                    continue
                work = TESTBED / "runs" / "tune" / "real" / pool / objective / f"seed-{seed}"
                for name, dev, unseen, evaluations in tune_cell(recipe, seed, work, candidates):
                    cell = {"testbed": "real", "pool": pool, "objective": objective, "seed": seed}
                    runs.append({**cell, "setting": name, "dev_a": dev, "dev_b": unseen, "evaluations": evaluations})
                    print(f"{cell} {name}: dev A {dev:.4f}, dev B {unseen:.4f} ({evaluations} evaluations)", flush=True)
    return runs


def tune_cell(recipe, seed: int, work: Path, candidates: dict[str, dict]) -> list[tuple[str, float, float, int]]:
    """Every candidate on one resident model: (name, dev A of its winner, dev B of its winner, evaluations)."""
    import shutil

    from mergekit_swarm.commands.compare import search_baselines as search
    from mergekit_swarm.commands.compare.scoring import Scorer
    from mergekit_swarm.core.run_options import RunOptions
    from mergekit_swarm.search.setup import prepare

    options = RunOptions(overwrite=True, quiet=True)
    recipe = recipe.resolve(options)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    granularities = sorted({overrides.get("granularity", "model") for overrides in candidates.values()})
    scorers = {}  # one resident model per LoRA space (and base as an expert or not): they make the pool
    found = []
    for i, (name, overrides) in enumerate(candidates.items()):
        settings = recipe.swarm.model_copy(update={"seed": seed, "holdout": 0.0, **overrides})
        pool = {"lora_space": settings.lora_space, "base_as_expert": settings.base_as_expert}
        if tuple(pool.values()) not in scorers:
            spaced = dataclasses.replace(recipe, swarm=recipe.swarm.model_copy(update=pool))
            scorers[tuple(pool.values())] = Scorer(prepare(spaced, options, "model"), options, work, granularities, seed)
        scorer = scorers[tuple(pool.values())]
        before = scorer.evaluations
        choice = search.swarm(scorer, settings, settings.granularity, work / f"candidate-{i}", quiet=True)
        unseen = scorer.evaluate([choice.candidate], "test")[0].utility
        found.append((name, choice.dev, unseen, scorer.evaluations - before))
    return found


TOY_PARTS = (
    "Each dev file is cut in two fixed parts: every candidate searches on dev A (75%, of which the holdout "
    "candidates hide a further 25% from the search) and is judged on dev B (the other 25%), which no search saw."
)
REAL_PARTS = (
    f"Real testbed (SmolLM2-135M-Instruct, seed 0): every candidate searches on the objective's dev "
    f"({real_testbed.DEV} examples, dev A) and is judged on dev B, {REAL_DEV_B} further examples of the same mix "
    "drawn after dev and test, which no search saw."
)


def markdown(report: dict) -> str:
    runs = report["runs"]
    names = list(report["candidates"])
    cells: dict[tuple, dict[str, list[dict]]] = {}
    for r in runs:
        cells.setdefault((r["testbed"], r["pool"], r["objective"]), {}).setdefault(r["setting"], []).append(r)
    lines = header("Choosing the swarm's defaults on dev", report)
    lines += [
        f"Swarm alone (granularity model unless set), {report['swarm']}; testbeds {report['testbeds']}, pools "
        f"{', '.join(report['pools'])}, {len(report['objectives'])} objectives, search seeds {report['seeds']}: "
        f"{len(cells)} cells. {REAL_PARTS if report['testbeds'] == ['real'] else TOY_PARTS} Test is never read. "
        f"{report['total_seconds'] / 60:.1f} min.",
        "",
        "| setting | overrides | mean dev A | mean dev B | mean dev B rank | dev B vs the first row: better / equal / worse "
        "cells | evaluations |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    reference = names[0]
    for name in names:
        a, b, ranks, evaluations, versus = [], [], [], [], [0, 0, 0]
        for per_setting in cells.values():
            if name not in per_setting:
                continue
            mean_b = {s: statistics.mean(r["dev_b"] for r in rows) for s, rows in per_setting.items()}
            a.append(statistics.mean(r["dev_a"] for r in per_setting[name]))
            b.append(mean_b[name])
            ranks.append(1 + sum(v > mean_b[name] for v in mean_b.values()))
            evaluations += [r["evaluations"] for r in per_setting[name]]
            diff = mean_b[name] - mean_b[reference]
            versus[0 if diff > 1e-9 else 2 if diff < -1e-9 else 1] += 1
        lines.append(
            f"| {name} | {report['candidates'][name]} | {statistics.mean(a):.4f} | {statistics.mean(b):.4f} | "
            f"{statistics.mean(ranks):.2f} | {versus[0]} / {versus[1]} / {versus[2]} | {statistics.mean(evaluations):.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
