"""Shared by the benchmark scripts: the machine and versions, memory sampling, the copy-bandwidth
and accumulation-rate references, and writing `benchmarks/results/<name>.{json,md}`."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    import torch

    info = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    import peft
    import torch
    import transformers

    import mergekit_swarm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "mergekit-swarm": mergekit_swarm.__version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command() -> str:
    return shlex.join(["python", *sys.argv])


def write_report(name: str, report: dict, markdown: str, out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)
    print(markdown)


def header(title: str, report: dict) -> list[str]:
    m = report["machine"]
    return [
        f"# {title}",
        "",
        f"- command: `{report['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gib']} GiB"
        + (f", {m['gpu']}" if "gpu" in m else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]


def resident_memory(status: Path) -> tuple[int, int]:
    """(anonymous, file-backed + shared) resident bytes of a process, from its /proc/<pid>/status."""
    fields = {}
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0)


class MemorySampler:
    """Peak resident memory of this process, sampled every `interval` seconds: anonymous
    (what the process allocated) and file-backed (mapped files, e.g. memory-mapped experts,
    which the page cache holds anyway and shares)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_anon, self.peak_file = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        anon, file = resident_memory(Path("/proc/self/status"))
        self.peak_anon, self.peak_file = max(self.peak_anon, anon), max(self.peak_file, file)

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run_sampled(cmd: list[str]) -> dict:
    """Run `cmd` (exits with its output if it fails); its wall time and peak anonymous and file-backed
    resident memory, sampled every 20 ms from /proc (a child's own, as `MemorySampler` is this process's)."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_anon = peak_file = 0
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            anon, file = resident_memory(status)
        except OSError:  # it has just ended
            break
        peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)
        time.sleep(0.02)
    output = child.communicate()[0]
    if child.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_anon_bytes": peak_anon, "peak_file_bytes": peak_file}


def bytes_written() -> int:
    """Bytes this process passed to write-like system calls so far (/proc/self/io wchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """The machine's plain copy bandwidth in GB/s (bytes read + bytes written per second),
    best of `repeats` copies of a buffer much larger than the caches."""
    import torch

    source = torch.ones(megabytes * 2**20, dtype=torch.uint8)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() / best / 1e9


def accumulate_rate(dtype: str, experts: int, elements: int = 24_000_000) -> float:
    """The arithmetic of materialisation alone, in G element-updates per second: the same
    chunked float32 accumulation (`write_combinations`) over tensors already in memory."""
    import numpy as np
    import torch

    from mergekit_swarm.experts.pool import ExpertPool, TensorSpec
    from mergekit_swarm.weights.kernels import Accumulator, write_combinations

    class InMemory(ExpertPool):
        def __init__(self):
            gen = torch.Generator().manual_seed(0)
            self.paths, self.names = [Path(f"e{k}") for k in range(experts)], []
            self.data = [torch.randn(elements, generator=gen).to(getattr(torch, dtype)) for _ in range(experts)]

        def tensor(self, expert, name):
            return self.data[expert]

        def unit(self, name):
            return name

    pool, spec = InMemory(), TensorSpec("t", (elements,), {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[dtype])
    target, weights, accumulator = torch.empty_like(pool.data[0]), np.ones((1, experts)) / experts, Accumulator("cpu")
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        write_combinations(pool, spec, weights, [target], accumulator=accumulator)
        best = min(best, time.perf_counter() - start)
    return experts * elements / best / 1e9
