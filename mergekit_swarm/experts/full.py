"""Experts that are full models (fine-tunes of one architecture, or earlier merges)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from mergekit_swarm.core.packing import pack
from mergekit_swarm.experts.pool import ExpertPool, TensorSpec, open_checkpoint


class FullModelPool(ExpertPool):
    """Full checkpoints read one tensor at a time from memory-mapped safetensors.

    Every tensor is combined, even one that all experts share: that keeps the result
    bit-identical to mergekit's `linear` merge with the same weights.
    """

    def __init__(self, paths: list[Path], *, allow_pickle: bool = False, names: list[str] | None = None):
        super().__init__(paths, names)
        self.files = [open_checkpoint(p, "model", "expert", allow_pickle=allow_pickle) for p in paths]
        per_expert = [{name: f.shape(name) for name in f.names()} for f in self.files]
        self._check_aligned(per_expert)
        self._check_floating(self.files)
        first = self.files[0]
        self.specs = [TensorSpec(name, per_expert[0][name], first.dtype(name)) for name in first.names()]
        self._views: dict[tuple[int, str], torch.Tensor] = {}
        self.held_on: torch.device | None = None  # where the experts are held (`held`; None: memory-mapped)

    def tensor(self, expert: int, name: str) -> torch.Tensor:
        # Views of the memory map cost no memory; keeping them saves a header lookup per read
        # (a tenth of a tiny model's evaluation, benchmarks/bench_eval.py).
        key = (expert, name)
        if key not in self._views:
            self._views[key] = self.files[expert].get(name)
        return self._views[key]

    def unit(self, name: str) -> str:
        return name

    @property
    def nbytes(self) -> int:
        """Bytes of all experts' tensors together."""
        return len(self) * sum(spec.torch_dtype.itemsize * math.prod(spec.shape) for spec in self.specs)

    def held(self, device: str | torch.device) -> FullModelPool:
        """This pool with every expert's tensors kept on `device` (mergekit's `--read-to-gpu`): a particle
        is then written at the device's memory bandwidth instead of streamed from the page cache. Each
        expert's tensors are packed end to end in checkpoint order (`core.packing`), so that runs of them
        are combined by a few large operations instead of a few per tensor. A copy: this pool keeps reading
        the memory-mapped files (a pool already held on `device` is returned as it is)."""
        device = torch.empty(0, device=device).device  # "cuda" and "cuda:0" alike: where tensors really land
        if self.held_on == device:
            return self
        held = copy.copy(self)
        held._views = {}
        for k in range(len(self)):
            packed = pack([self.tensor(k, spec.name) for spec in self.specs], device)
            held._views.update(((k, spec.name), tensor) for spec, tensor in zip(self.specs, packed))
        held.held_on = device
        return held
