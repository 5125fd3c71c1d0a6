"""Experts that are full models (fine-tunes of one architecture, or earlier merges)."""

from __future__ import annotations

from pathlib import Path

import torch

from mergekit_swarm.errors import ExpertError
from mergekit_swarm.experts.pool import ExpertPool, TensorSpec, open_safetensors


class FullModelPool(ExpertPool):
    """Full checkpoints read one tensor at a time from memory-mapped safetensors."""

    kind = "full"

    def __init__(self, paths: list[Path]):
        super().__init__(paths)
        self.files = [open_safetensors(p, "model", "expert") for p in paths]
        per_expert = [{name: f.shape(name) for name in f.names()} for f in self.files]
        self._check_aligned(per_expert)
        first = self.files[0]
        for name in first.names():
            dtype = first.dtype(name)
            if dtype not in ("F64", "F32", "F16", "BF16"):
                raise ExpertError(
                    f"expert {self.names[0]!r}: tensor {name!r} has dtype {dtype}; only floating tensors can be merged"
                )
            self.specs.append(TensorSpec(name, per_expert[0][name], dtype))

    def tensor(self, expert: int, name: str) -> torch.Tensor:
        return self.files[expert].get(name)

    def unit(self, name: str) -> str:
        return name
