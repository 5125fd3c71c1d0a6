"""The search's answer: the global best, or, with `swarm.holdout`, the personal best that does
best on the dev examples the search never saw.

A global best chosen among hundreds of evaluations on ~200 examples partly fits those
examples' quirks; scoring the few best personal bests on held-out dev examples and keeping the
best there is a cheap guard against that (a handful of evaluations, never test).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from mergekit_swarm import pso
from mergekit_swarm.search.evaluator import ParticleEvaluator


@dataclass(frozen=True)
class HoldoutCandidate:
    """A personal best compared on the held-out examples."""

    particle: int
    search: float  # its utility on the examples the search saw
    holdout: float | None  # on the held-out ones (None: failed)


@dataclass(frozen=True)
class Selection:
    """The winner's coefficients, its utility on the examples the search saw, and, with a
    holdout, every candidate compared (best search utility first) and which one won."""

    coefficients: np.ndarray
    utility: float
    candidates: list[HoldoutCandidate] = field(default_factory=list)
    chosen: int = 0  # index into `candidates`

    def report(self) -> dict | None:
        """For `swarm_result.json` and the card (None without a holdout)."""
        if not self.candidates:
            return None
        return {"chosen": self.chosen, "candidates": [asdict(c) for c in self.candidates]}


def select_winner(state: pso.SwarmState, settings: pso.SwarmSettings, evaluator: ParticleEvaluator) -> Selection:
    """The global best (`holdout: 0`), or the best on the "holdout" split among the
    `holdout_candidates` distinct personal bests with the highest search utility (ties: the one
    with the higher search utility, so the global best, first in line, wins a tie)."""
    if not settings.holdout:
        return Selection(pso.winner(state), state.global_best_utility)
    particles = _best_personal_bests(state, settings.holdout_candidates)
    results = list(evaluator.evaluate([state.best_positions[i] for i in particles], "holdout"))
    candidates = [
        HoldoutCandidate(int(i), float(state.best_utilities[i]), None if r.failed or not math.isfinite(r.utility) else r.utility)
        for i, r in zip(particles, results)
    ]
    chosen = max(range(len(candidates)), key=lambda j: (_or_worst(candidates[j].holdout), -j))
    winner = candidates[chosen]
    return Selection(state.best_positions[winner.particle].copy(), winner.search, candidates, chosen)


def _best_personal_bests(state: pso.SwarmState, count: int) -> list[int]:
    """Particles whose personal bests are the `count` best distinct ones, best first (the global
    best is one of them, it is its particle's personal best, and it comes first among equals: a
    later particle that only tied it never became the global best)."""
    order = sorted(
        (i for i in range(state.shape[0]) if math.isfinite(state.best_utilities[i])),
        key=lambda i: (-state.best_utilities[i], i != state.global_best_particle, i),
    )
    chosen, seen = [], set()
    for i in order:
        key = state.best_positions[i].tobytes()
        if key not in seen:
            seen.add(key)
            chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


def _or_worst(value: float | None) -> float:
    return -math.inf if value is None else value
