"""Peak memory of a whole `mergekit-swarm` run on a pool of full fine-tunes, against one model's size.

    python benchmarks/full_pool_memory.py                 # six 1.0B-parameter float32 experts (22.9 GB)
    python benchmarks/full_pool_memory.py --hidden 1024 --layers 8 --intermediate 2816 --name full_pool_memory_small

The experts are memory-mapped: the page cache holds them and shares them (file-backed memory).
What the run itself allocates is its anonymous memory: the resident model, the accumulator, the
output shards. Measured here: the CLI's peak `RssAnon`, sampled every 20 ms from /proc, over the
whole run (search, test report, writing the winner), with a utility that reads one weight (no
forward passes: what is measured is the weights' side). Target: at most ~1.2 models.
Builds the experts once under `--workdir` (default `$TMPDIR/mergekit-swarm-bench`; delete it after).
Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from lib.common import command, header, machine, run_sampled, versions, write_report
from lib.synthetic import Shape, build_pool

# what the CLI imports before it loads anything: the interpreter's and libraries' own memory
LIBRARIES = "import torch, transformers, peft, mergekit.merge, mergekit_swarm.cli, mergekit_swarm.commands.run"
SCORE = """import torch


def score(model, tokenizer):
    return float(next(model.parameters()).reshape(-1)[:1024].double().sum())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--particles", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--name", default="full_pool_memory", help="results/<name>.{json,md}")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mergekit-swarm-bench"))
    args = parser.parse_args()

    shape = Shape(hidden=args.hidden, layers=args.layers, intermediate=args.intermediate, dtype="float32")
    start = time.perf_counter()
    pool = build_pool(Path(args.workdir), shape, args.experts, rank=4)
    build_seconds = time.perf_counter() - start
    model_bytes = sum(f.stat().st_size for f in pool.full[0].glob("*.safetensors"))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        recipe = _write_recipe(Path(tmp), pool.full, args.particles, args.iterations)
        run = run_sampled([sys.executable, "-m", "mergekit_swarm", str(recipe), str(Path(tmp) / "out"), "--quiet"])
    libraries = run_sampled([sys.executable, "-c", LIBRARIES])["peak_anon_bytes"]
    report = {
        "command": command(),
        "machine": machine(),
        "versions": versions(),
        "shape": shape.name,
        "parameters": pool.parameters,
        "experts": args.experts,
        "model_bytes": model_bytes,
        "pool_bytes": model_bytes * args.experts,
        "particles": args.particles,
        "iterations": args.iterations,
        "build_seconds": round(build_seconds, 1),
        **run,
        "peak_anon_models": round(run["peak_anon_bytes"] / model_bytes, 2),
        "libraries_anon_bytes": libraries,
        "beyond_libraries_models": round((run["peak_anon_bytes"] - libraries) / model_bytes, 2),
    }
    write_report(args.name, report, markdown(report))


def _write_recipe(folder: Path, experts: list[Path], particles: int, iterations: int) -> Path:
    from mergekit_swarm.testing.toy import build_char_tokenizer

    (folder / "score.py").write_text(SCORE)
    build_char_tokenizer().save_pretrained(folder / "tokenizer")  # the synthetic experts have none; the utility reads none
    recipe = {
        "merge_method": "model_swarms",
        "models": [{"model": str(e)} for e in experts],
        "tokenizer_source": str(folder / "tokenizer"),
        "dtype": "float32",
        "swarm": {"particles": particles, "max_iterations": iterations, "patience": iterations + 1, "seed": 0},
        "utility": {"type": "python", "function": "score.py:score"},
    }
    path = folder / "swarm.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def markdown(report: dict) -> str:
    gb = 1e9
    lines = header("Peak memory of a whole run on a full-model pool", report)
    lines += [
        f"{report['experts']} full experts of a {report['parameters'] / 1e9:.2f}B-parameter Llama ({report['shape']}): "
        f"{report['model_bytes'] / gb:.2f} GB each, {report['pool_bytes'] / gb:.1f} GB in all, memory-mapped; "
        f"{report['particles']} particles, {report['iterations']} iterations, a utility that reads one weight. "
        f"The whole CLI run took {report['seconds']:.0f} s (building the experts: {report['build_seconds']:.0f} s).",
        "",
        "| | GB | models |",
        "|---|---:|---:|",
        f"| one model (safetensors) | {report['model_bytes'] / gb:.2f} | 1.00 |",
        f"| peak anonymous memory (what the run allocates) | {report['peak_anon_bytes'] / gb:.2f} | "
        f"{report['peak_anon_models']:.2f} |",
        f"| of which the interpreter and libraries (a process that only imports them) | "
        f"{report['libraries_anon_bytes'] / gb:.2f} | {report['libraries_anon_bytes'] / report['model_bytes']:.2f} |",
        f"| peak anonymous memory beyond the libraries | {(report['peak_anon_bytes'] - report['libraries_anon_bytes']) / gb:.2f} "
        f"| {report['beyond_libraries_models']:.2f} |",
        f"| peak file-backed memory (experts mapped from the page cache) | {report['peak_file_bytes'] / gb:.2f} | "
        f"{report['peak_file_bytes'] / report['model_bytes']:.2f} |",
        "",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
