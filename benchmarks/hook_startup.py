"""Start-up cost of the `mergekit_swarm.pth` hook on an unrelated `python -c pass`.

    python benchmarks/hook_startup.py --runs 40

Runs `python -c pass` alternately with the hook and with MERGEKIT_SWARM_DISABLE_HOOK=1
in the current environment (where mergekit-swarm is installed), and reads
`python -X importtime` for the modules the hook imports. Writes
`benchmarks/results/hook_startup.{json,md}`. The target is < 50 ms added.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - start


def hook_imports_us(env: dict) -> dict[str, int]:
    """Self time (µs) of each module imported by the .pth line, from -X importtime."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True).stderr
    out = {}
    for line in err.splitlines():
        if line.startswith("import time:") and "mergekit_swarm" in line:
            self_us, _, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            out[name] = int(self_us)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    pth = Path(sysconfig.get_paths()["purelib"]) / "mergekit_swarm.pth"
    if not pth.exists():
        sys.exit(f"{pth} not found: install mergekit-swarm in this environment first (pip install -e .)")
    on = {k: v for k, v in os.environ.items() if k != "MERGEKIT_SWARM_DISABLE_HOOK"}
    off = {**on, "MERGEKIT_SWARM_DISABLE_HOOK": "1"}
    for env in (on, off):  # warm the page cache
        timed_run(env)
    with_hook, without = [], []
    for _ in range(args.runs):  # alternate, so drifts in machine load hit both sides
        with_hook.append(timed_run(on))
        without.append(timed_run(off))
    imports = hook_imports_us(on)

    def median(values: list[float]) -> float:
        return round(1000 * statistics.median(values), 2)

    def p90(values: list[float]) -> float:
        return round(1000 * statistics.quantiles(values, n=10)[8], 2)

    report = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "runs": args.runs,
        "median_ms": {"hook": median(with_hook), "no_hook": median(without)},
        "p90_ms": {"hook": p90(with_hook), "no_hook": p90(without)},
        "added_median_ms": round(median(with_hook) - median(without), 2),
        "hook_imports_self_us": imports,
        "hook_imports_total_ms": round(sum(imports.values()) / 1000, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hook_startup.json").write_text(json.dumps(report, indent=2) + "\n")
    md = "\n".join(
        [
            "# Start-up cost of the mergekit_swarm.pth hook",
            "",
            f"- command: `{report['command']}`",
            f"- machine: {report['machine']}, Python {report['python']}",
            "",
            "| `python -c pass` | median (ms) | p90 (ms) |",
            "|---|---:|---:|",
            f"| hook on | {report['median_ms']['hook']} | {report['p90_ms']['hook']} |",
            f"| MERGEKIT_SWARM_DISABLE_HOOK=1 | {report['median_ms']['no_hook']} | {report['p90_ms']['no_hook']} |",
            "",
            f"Added by the hook (median difference, {args.runs} alternating runs each): "
            f"**{report['added_median_ms']} ms**; the modules it imports take "
            f"{report['hook_imports_total_ms']} ms by `-X importtime` "
            f"({', '.join(f'{k} {v} µs' for k, v in imports.items())}). Neither torch nor mergekit is imported.",
            "",
        ]
    )
    (args.out / "hook_startup.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
