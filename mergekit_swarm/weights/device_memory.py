"""How many particles fit in one batch on the device: measured once, lowered on out-of-memory.

On a GPU, scoring all particles of an iteration in one batch is the lever (decoding is
memory-bound: one step over 20 particles' rows costs about what one particle's rows cost), as
long as their KV caches and activations fit. `CudaMemory` measures what one particle's scoring
takes at its peak, once, and the evaluator batches as many as the free memory holds; an
out-of-memory error later halves the batch and retries. Neither changes any result: a particle
scores the same in any company.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Share of the free memory the batches may take (the rest absorbs fragmentation and the
# activations of the longest prompts, which the first particle's measurement may not have seen).
HEADROOM = 0.8


class CudaMemory:
    """The free memory of a CUDA device and the peak use of a piece of work on it."""

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


def device_memory(device: str | torch.device) -> CudaMemory | None:
    """The memory probe of `device`; None on a CPU (where batches are limited by the setting only)."""
    device = torch.device(device)
    return CudaMemory(device) if device.type == "cuda" else None


def particles_that_fit(free_bytes: int, per_particle_bytes: int, wanted: int) -> int:
    """How many particles' scoring fits in `HEADROOM` of `free_bytes`, between 1 and `wanted`."""
    return max(1, min(wanted, int(free_bytes * HEADROOM) // max(1, per_particle_bytes)))
