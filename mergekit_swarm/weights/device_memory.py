"""How many particles fit in one batch on the device: measured once, lowered on out-of-memory.

On a GPU, scoring all particles of an iteration in one batch is the lever (decoding is
memory-bound: one step over 20 particles' rows costs about what one particle's rows cost), as
long as their KV caches and activations fit. `CudaMemory` measures what one particle's scoring
takes at its peak, once, and the evaluator batches as many as the free memory holds; an
out-of-memory error later halves the batch and retries. Neither changes any result: a particle
scores the same in any company.

On a CPU the trade is another: once the model's compute dominates, a bigger batch buys little
while every row adds its KV cache (SmolLM2-135M, 8 particles x 60 prompts all in one batch: 1.20x
one at a time per iteration, 2.73 GB peak against 0.79 GB, for a 0.54 GB model). So `auto` on a
CPU (`HostMemory`) gives the batches a budget, not the free memory: as much as the resident model
itself takes, at least `HOST_FLOOR` (small models, where batching pays most and costs little, keep
every particle in one batch), and never more than `HEADROOM` of what is free. There: 3 particles
per batch, 1.22x at 1.59 GB (benchmarks/results/whole_run.md).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

# Share of the free memory the batches may take (the rest absorbs fragmentation and the
# activations of the longest prompts, which the first particle's measurement may not have seen).
HEADROOM = 0.8
# The least a CPU's batches may take: below it, memory is not worth a slower search.
HOST_FLOOR = 256 * 2**20


class CudaMemory:
    """The free memory of a CUDA device and the peak use of a piece of work on it."""

    budget = "the device's free memory"

    def __init__(self, device: torch.device):
        self.device = device

    def free_bytes(self) -> int:
        return torch.cuda.mem_get_info(self.device)[0]

    @contextmanager
    def peak(self) -> Iterator[list[int]]:
        """Yields a list that holds, after the block, the bytes the block added at its peak."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        used: list[int] = []
        yield used
        torch.cuda.synchronize(self.device)
        used.append(max(1, torch.cuda.max_memory_allocated(self.device) - before))

    def release(self) -> None:
        torch.cuda.empty_cache()


class HostMemory:
    """This process's memory on a Linux host (`/proc`): the batches' budget, and the growth of its
    anonymous resident memory over a piece of work, sampled every `INTERVAL` seconds by a thread.

    Anonymous memory only: what a batch adds (KV cache, activations, logits) is allocated, while the
    file-backed pages the first forward touches (memory-mapped weights, the libraries' code) are not
    the batch's and would count a model's worth more. Measured on the first evaluation, before the
    allocator holds freed memory that later work reuses unseen."""

    STATUS = Path("/proc/self/status")
    INTERVAL = 0.002
    budget = "a CPU's batch budget (the model's size)"

    def __init__(self, model_bytes: int):
        self.model_bytes = model_bytes

    @classmethod
    def available(cls) -> bool:
        """Whether this host reports the process's anonymous memory (Linux)."""
        try:
            return cls._status("RssAnon") > 0
        except OSError:
            return False

    def free_bytes(self) -> int:
        """What the batches may take (before `HEADROOM`): the larger of the model and `HOST_FLOOR`,
        within the host's available memory."""
        budget = max(self.model_bytes, HOST_FLOOR) / HEADROOM
        return int(min(budget, self._meminfo("MemAvailable")))

    @contextmanager
    def peak(self) -> Iterator[list[int]]:
        """Yields a list that holds, after the block, the bytes anonymous memory grew by at its peak."""
        before = self._status("RssAnon")
        highest, done = [before], threading.Event()

        def sample() -> None:
            while not done.wait(self.INTERVAL):
                highest[0] = max(highest[0], self._status("RssAnon"))

        thread = threading.Thread(target=sample, name="host-memory-peak", daemon=True)
        thread.start()
        used: list[int] = []
        try:
            yield used
        finally:
            done.set()
            thread.join()
        used.append(max(1, max(highest[0], self._status("RssAnon")) - before))

    def release(self) -> None:
        pass

    @classmethod
    def _status(cls, key: str) -> int:
        return _kilobytes(cls.STATUS.read_text(), key)

    @staticmethod
    def _meminfo(key: str) -> int:
        return _kilobytes(Path("/proc/meminfo").read_text(), key)


def _kilobytes(text: str, key: str) -> int:
    """Bytes of a `key:   1234 kB` line of a /proc file (0 if absent)."""
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def device_memory(device: str | torch.device, *, host_model_bytes: int | None = None) -> CudaMemory | HostMemory | None:
    """The memory probe of `device`. On a CPU only with `host_model_bytes` (`particles_per_batch: auto`:
    batches within a budget of the model's size) and where the host can measure a peak; else None
    (batches limited by the setting only)."""
    device = torch.device(device)
    if device.type == "cuda":
        return CudaMemory(device)
    if host_model_bytes is not None and HostMemory.available():
        return HostMemory(host_model_bytes)
    return None


def particles_that_fit(free_bytes: int, per_particle_bytes: int, wanted: int) -> int:
    """How many particles' scoring fits in `HEADROOM` of `free_bytes`, between 1 and `wanted`."""
    return max(1, min(wanted, int(free_bytes * HEADROOM) // max(1, per_particle_bytes)))
