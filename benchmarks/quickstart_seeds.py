"""The quickstart over several swarm seeds: experts vs winner on dev and test, and wall time.

    python benchmarks/quickstart_seeds.py --seeds 1 2 3

Writes `benchmarks/results/quickstart_seeds.{json,md}` with the machine, versions and
command. The experts are built once (examples/quickstart/build.py, cached); only the
swarm seed changes between runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--granularity", default=None, help="override swarm.granularity")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch
    import transformers

    import mergekit_swarm
    from mergekit_swarm.commands.run import RunOptions, run_swarm
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.testing import quickstart

    recipe = load_recipe(quickstart.build(ROOT / "examples" / "quickstart", quiet=True))
    if args.granularity:
        recipe = replace(recipe, swarm=recipe.swarm.model_copy(update={"granularity": args.granularity}))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            seeded = replace(recipe, swarm=recipe.swarm.model_copy(update={"seed": seed}))
            start = time.perf_counter()
            result = run_swarm(seeded, Path(tmp) / f"seed{seed}", RunOptions(quiet=True))
            seconds = time.perf_counter() - start
            best = max(range(len(result.experts)), key=lambda k: result.expert_dev[k])
            runs.append(
                {
                    "seed": seed,
                    "best_expert": result.experts[best],
                    "best_expert_dev": result.expert_dev[best],
                    "best_expert_test": result.expert_test[best],
                    "winner_dev": result.winner_dev,
                    "winner_test": result.winner_test,
                    "iterations": result.iterations,
                    "evaluations": result.evaluations,
                    "seconds": round(seconds, 1),
                }
            )
            print(json.dumps(runs[-1]))

    report = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.platform()}",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "mergekit-swarm": mergekit_swarm.__version__,
        },
        "granularity": recipe.swarm.granularity,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quickstart_seeds.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "quickstart_seeds.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    runs = report["runs"]
    lines = [
        "# Quickstart: best expert vs swarm winner over seeds",
        "",
        f"- command: `{report['command']}`",
        f"- machine: {report['machine']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- granularity: {report['granularity']}",
        "",
        "| seed | best expert (dev) | expert dev | expert test | winner dev | winner test | iterations | evaluations | seconds |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['seed']} | {r['best_expert']} | {r['best_expert_dev']:.3f} | {r['best_expert_test']:.3f} | "
            f"{r['winner_dev']:.3f} | {r['winner_test']:.3f} | {r['iterations']} | {r['evaluations']} | {r['seconds']} |"
        )

    def mean_std(key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"

    lines += [
        "",
        f"Mean ± std: expert test {mean_std('best_expert_test')}, winner dev {mean_std('winner_dev')}, "
        f"winner test {mean_std('winner_test')}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
