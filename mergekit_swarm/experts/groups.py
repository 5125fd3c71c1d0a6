"""Parameter groups: which coefficient vector of a particle applies to which tensor.

* `model`: one group, the whole model (the paper).
* `layer`: one group per transformer block (`model.layers.7`, `transformer.h.7`,
  `blocks.7`, `encoder.layer.7`; the group is named by that prefix, so the blocks of
  two towers stay apart); every tensor outside the blocks (embeddings, final norm,
  head) is its own group.
* `tensor`: one group per tensor; for LoRA pools per adapted module, so lora_A and
  lora_B of one module share coefficients as in the paper's formulation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mergekit_swarm.experts import ExpertPool
from mergekit_swarm.pso import Granularity

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.\d+\.")


@dataclass(frozen=True)
class GroupLayout:
    """Group names, and for every tensor of the pool (in pool order) its group index."""

    granularity: Granularity
    names: tuple[str, ...]
    of_tensor: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.names)

    def members(self, group: int, tensor_names: Sequence[str]) -> list[str]:
        return [t for t, g in zip(tensor_names, self.of_tensor) if g == group]


def group_key(unit: str, granularity: Granularity) -> str:
    if granularity == "model":
        return "model"
    if granularity == "layer" and (m := _LAYER.search(unit)):
        return unit[: m.end() - 1]  # e.g. "model.layers.7"
    return unit


def group_layout(pool: ExpertPool, granularity: Granularity) -> GroupLayout:
    """Groups in order of first appearance among the pool's tensors."""
    index: dict[str, int] = {}
    of_tensor = []
    for name in pool.tensor_names:
        key = group_key(pool.unit(name), granularity)
        of_tensor.append(index.setdefault(key, len(index)))
    return GroupLayout(granularity, tuple(index), tuple(of_tensor))
