"""What a comparison runs: which baselines, which swarm granularities, which budgets."""

from __future__ import annotations

from dataclasses import dataclass

from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.pso import Granularity

# One-shot baselines (a handful of evaluations each, hyper-parameters picked on dev).
BASELINES = (
    "best_expert",
    "uniform_soup",
    "greedy_soup",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "slerp",
    "model_stock",
)
# Search baselines, each given as many utility evaluations as the swarm used.
SEARCH_BASELINES = ("random_search", "lorahub", "cma_es")
GRANULARITIES: tuple[Granularity, ...] = ("model", "layer", "tensor")


@dataclass(frozen=True)
class CompareOptions:
    """Which methods `run_comparison` runs.

    `granularities`: the swarm is run once per granularity (None: the recipe's own).
    `budget`: utility evaluations per search baseline (None: as many as the first swarm run used).
    `seed`: seeds the swarm runs, the search baselines and DARE's random drops (None: the recipe's `swarm.seed`).
    `long_swarm`: also run the first granularity's swarm with this many times its `max_iterations` and
    `patience` (a larger-budget row; None: not).
    """

    baselines: tuple[str, ...] = BASELINES
    search: tuple[str, ...] = ()
    granularities: tuple[str, ...] | None = None
    budget: int | None = None
    seed: int | None = None
    long_swarm: int | None = None

    def __post_init__(self):
        for kind, names, valid in (
            ("baseline", self.baselines, BASELINES),
            ("search baseline", self.search, SEARCH_BASELINES),
            ("granularity", self.granularities or (), GRANULARITIES),
        ):
            unknown = [n for n in names if n not in valid]
            if unknown:
                raise ConfigError(f"unknown {kind} {unknown[0]!r}; choose from {', '.join(valid)}")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"--budget must be at least 1, not {self.budget}")
        if self.long_swarm is not None and self.long_swarm < 2:
            raise ConfigError(f"--long-swarm must be at least 2 (times the iterations), not {self.long_swarm}")
        if self.search and self.budget is None and self.granularities == ():
            raise ConfigError("search baselines need --budget when no swarm is run")

    def swarm_granularities(self, default: Granularity) -> tuple[Granularity, ...]:
        """The granularities the swarm runs at: `granularities` (checked above), else `default` (the recipe's)."""
        if self.granularities is None:
            return (default,)
        return tuple(next(g for g in GRANULARITIES if g == name) for name in self.granularities)
