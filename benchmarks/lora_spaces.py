"""What update space costs against factor space: seconds per iteration, side by side, on the same particles.

    python benchmarks/lora_spaces.py [--repeats 3] [--pools quickstart,smollm2]

For each LoRA pool (the quickstart's toy experts; the SmolLM2 example's four experts of a real 135M
instruct model, built by examples/smollm2/build.py), the same swarm start (experts and crossovers)
is evaluated with every particle stacked in one batch, in factor space (rank = the largest expert
rank) and in update space (rank = the largest sum of ranks over modules), the two taking turns in
every pass; the fastest pass counts and the median of the paired ratios is reported. Writes
benchmarks/results/lora_spaces.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from lib.common import ROOT, command, header, machine, versions, write_report

POOLS = {"quickstart": "examples/quickstart", "smollm2": "examples/smollm2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pools", default=",".join(POOLS))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    report = {"command": command(), "machine": machine(), "versions": versions(), "pools": {}}
    for name in args.pools.split(","):
        print(f"== {name}", flush=True)
        report["pools"][name] = time_spaces(name, args.repeats)
    write_report("lora_spaces", report, markdown(report))


def time_spaces(name: str, repeats: int) -> dict:
    from mergekit_swarm import pso
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.core.run_options import RunOptions
    from mergekit_swarm.search.evaluator import LocalEvaluator
    from mergekit_swarm.search.setup import prepare
    from mergekit_swarm.testing import quickstart, real_testbed

    folder = ROOT / POOLS[name]
    recipe_file = quickstart.build(folder, quiet=True) if name == "quickstart" else real_testbed.build_example(folder, quiet=True)
    recipe = load_recipe(recipe_file).resolve()
    options = RunOptions(quiet=True)
    engines, particles = {}, None
    for space in ("factor", "update"):
        spaced = dataclasses.replace(recipe, swarm=recipe.swarm.model_copy(update={"lora_space": space}))
        setup = prepare(spaced, options, "model")
        start = spaced.swarm.model_copy(update={"initial": "experts"})  # positions only: no utilities needed
        particles = particles or list(pso.initialize(start, len(setup.pool), len(setup.layout)).positions)
        engines[space] = (LocalEvaluator.open(setup, options, len(particles)), setup.pool.rank)
    passes: dict[str, list[float]] = {space: [] for space in engines}
    utilities = {}
    for engine, _ in engines.values():
        list(engine.evaluate(particles[:2]))  # warm-up (first touch, tokenization caches)
    for _ in range(repeats):
        for space, (engine, _) in engines.items():
            start = time.perf_counter()
            results = list(engine.evaluate(particles))
            passes[space].append(time.perf_counter() - start)
            utilities[space] = [round(r.utility, 4) for r in results]
            print(f"  {space}: {passes[space][-1]:.2f} s for {len(particles)} particles", flush=True)
    ratios = [u / f for f, u in zip(passes["factor"], passes["update"])]
    return {
        "particles": len(particles),
        "experts": len(recipe.experts),
        "rank": {space: rank for space, (_, rank) in engines.items()},
        "seconds_per_iteration": {space: round(min(seconds), 3) for space, seconds in passes.items()},
        "update_over_factor": round(statistics.median(ratios), 3),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "mean_utility": {space: round(statistics.fmean(u), 4) for space, u in utilities.items()},
    }


def markdown(report: dict) -> str:
    lines = header("LoRA spaces: update vs factor, seconds per iteration", report)
    lines += [
        "Every particle of a swarm start (experts and crossovers) in one stacked batch; fastest of the passes, the two spaces "
        "taking turns; ratio = median over passes of update / factor.",
        "",
        "| pool | particles | rank factor / update | s per iteration, factor | s per iteration, update | update / factor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["pools"].items():
        lines.append(
            f"| {name} | {r['particles']} | {r['rank']['factor']} / {r['rank']['update']} | "
            f"{r['seconds_per_iteration']['factor']} | {r['seconds_per_iteration']['update']} | "
            f"{r['update_over_factor']} ({r['ratio_range'][0]}-{r['ratio_range'][1]}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
