"""How our time per iteration (no forward passes) grows with experts n, particles N, model
size and granularity, for full and LoRA pools.

    python benchmarks/scaling.py

Each point is one `bench_step.py --loops ours` measurement (its own process); the defaults
(n = 10, N = 20, 106M parameters, granularity model) are varied one at a time.
Writes benchmarks/results/scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lib.common import RESULTS, command, header, machine, versions, write_report

HERE = Path(__file__).resolve().parent
SIZES = {  # all 8 blocks, 32k vocabulary
    "hidden 384": ["--hidden", "384", "--intermediate", "1024"],
    "hidden 768": [],
    "hidden 1024": ["--hidden", "1024", "--intermediate", "2816"],
}


def measure(kind: str, extra: list[str], iterations: int, workdir: str | None) -> dict:
    cmd = [sys.executable, str(HERE / "bench_step.py"), "--kind", kind, "--loops", "ours", "--name", "scaling-point"]
    cmd += ["--iterations", str(iterations), "--repeats", "2", *extra, *(["--workdir", workdir] if workdir else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    point = json.loads((RESULTS / "scaling-point.json").read_text())
    row = point["rows"][0]
    return {"parameters": point["model"]["parameters"], **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    grid = (
        [("experts", str(n), ["--experts", str(n)]) for n in (2, 5, 10)]
        + [("particles", str(n), ["--particles", str(n)]) for n in (10, 20, 40)]
        + [("granularity", g, ["--granularity", g]) for g in ("model", "layer", "tensor")]
        + [("model size", name, flags) for name, flags in SIZES.items()]
    )
    rows = []
    for kind in ("full", "lora"):
        for axis, value, extra in grid:
            result = measure(kind, extra, args.iterations, args.workdir)
            rows.append({"pool": kind, "axis": axis, "value": value, **result})
            print(json.dumps(rows[-1]), flush=True)
    for stale in RESULTS.glob("scaling-point.*"):
        stale.unlink()
    report = {"command": command(), "machine": machine(), "versions": versions(), "rows": rows}
    write_report("scaling", report, markdown(report))


def markdown(report: dict) -> str:
    lines = header("Our time per iteration (no forward passes) against n, N, model size and granularity", report)
    lines += [
        "Defaults, varied one at a time: n = 10 experts, N = 20 particles, 106M-parameter Llama in bfloat16, "
        "granularity model, 4 LoRA slots per pass (rank 16 on all linear layers).",
        "",
        "| pool | varied | value | parameters | s / iteration | ms per particle written |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['pool']} | {r['axis']} | {r['value']} | {r['parameters'] / 1e6:.0f}M | "
            f"{r['seconds_per_iteration']:.3f} | {1e3 * r['materialise_seconds_per_particle']:.1f} |"
        )
    lines += [
        "",
        "Read with benchmarks/README.md (Scaling): repeated points show the run-to-run noise of this machine.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
