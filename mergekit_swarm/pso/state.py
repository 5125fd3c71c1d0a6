"""The whole swarm as arrays of coefficients over the experts, and its serialisation.

A position row `x[i, g, :]` holds the coefficients of particle i over the n experts for
parameter group g; it always sums to 1 (an affine combination). A velocity row sums to
0. Nothing here knows about tensors: a particle becomes weights only when evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

_ARRAYS = (
    "positions",
    "velocities",
    "utilities",
    "best_positions",
    "best_utilities",
    "global_best",
    "global_worst",
    "stale",
    "skip",
)


@dataclass
class SwarmState:
    """Everything needed to continue a search exactly where it stopped."""

    positions: np.ndarray  # (particles, groups, experts), rows sum to 1
    velocities: np.ndarray  # (particles, groups, experts), rows sum to 0
    utilities: np.ndarray  # (particles,) each particle's last utility (nan: never evaluated)
    best_positions: np.ndarray  # (particles, groups, experts) personal bests
    best_utilities: np.ndarray  # (particles,)
    global_best: np.ndarray  # (groups, experts)
    global_worst: np.ndarray  # (groups, experts) worst position ever evaluated
    stale: np.ndarray  # (particles,) iterations since the personal best improved
    skip: np.ndarray  # (particles,) bool: evaluation dropout skips these evaluations; they reuse `utilities`
    rng: np.random.Generator
    global_best_utility: float = -np.inf
    global_best_particle: int = -1
    global_worst_utility: float = np.inf
    global_stale: int = 0  # iterations since the global best improved
    step_length: float = 1.0
    iteration: int = 0  # number of moves made; 0 is the initial evaluation
    evaluated: bool = False  # whether the current positions have been evaluated (or skipped)
    restarts: int = 0
    probes: int = 0  # particles moved near the global best by `stall_probes`
    done: bool = False
    stop_reason: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(particles, groups, experts)."""
        return self.positions.shape  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; floats survive a JSON round trip bit for bit."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _ARRAYS:
                out[f.name] = {"dtype": str(value.dtype), "shape": list(value.shape), "data": value.ravel().tolist()}
            elif f.name == "rng":
                out[f.name] = value.bit_generator.state
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SwarmState:
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            value = data[f.name]
            if f.name in _ARRAYS:
                value = np.asarray(value["data"], dtype=value["dtype"]).reshape(value["shape"])
            elif f.name == "rng":
                state = value
                value = np.random.Generator(getattr(np.random, state["bit_generator"])())
                value.bit_generator.state = state
            kwargs[f.name] = value
        return cls(**kwargs)
