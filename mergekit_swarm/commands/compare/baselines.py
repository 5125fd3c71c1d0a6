"""The one-shot baselines: the best expert, soups, and mergekit's merge methods.

Each returns a `Choice`: the candidate it settles on (by dev utility only), that utility,
and the hyper-parameters it picked. Evaluations are counted by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mergekit_swarm.commands.compare.mergekit_methods import GRIDS, NEEDS_BASE, lora_reference, mergekit_recipe
from mergekit_swarm.commands.compare.scoring import Candidate, MergekitMerge, Mix, Scorer
from mergekit_swarm.weights.kernels import one_hot


@dataclass
class Choice:
    """What a method settled on. `extra_evaluations`: evaluations it relied on that another
    method paid for (the experts' dev utilities); `note`: why it was skipped, or a remark."""

    candidate: Candidate | None
    dev: float
    settings: dict = field(default_factory=dict)
    extra_evaluations: int = 0
    note: str = ""


class ExpertScores:
    """The experts' dev utilities, measured once and shared by the methods that rank experts."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._values: list[float] | None = None

    def values(self) -> list[float]:
        if self._values is None:
            n = self.scorer.experts
            self._values = [e.utility for e in self.scorer.evaluate([expert_mix(self.scorer, k) for k in range(n)])]
        return self._values

    @property
    def measured(self) -> bool:
        return self._values is not None

    def shared(self) -> int:
        """Evaluations a method relies on without paying for them: the experts', if already measured."""
        return self.scorer.experts if self.measured else 0

    def ranking(self) -> list[int]:
        """Experts from best to worst dev utility (ties: pool order)."""
        values = self.values()
        return sorted(range(len(values)), key=lambda k: -values[k])


def expert_mix(scorer: Scorer, k: int) -> Mix:
    """Expert `k` itself, as a mix."""
    return Mix(one_hot(scorer.layout("model"), scorer.experts, k))


def _uniform(experts: list[int], n: int) -> Mix:
    c = np.zeros((1, n))
    c[0, experts] = 1.0 / len(experts)
    return Mix(c)


def best_expert(scorer: Scorer, experts: ExpertScores) -> Choice:
    k = experts.ranking()[0]
    return Choice(expert_mix(scorer, k), experts.values()[k], {"expert": scorer.setup.pool.names[k]})


def uniform_soup(scorer: Scorer, experts: ExpertScores) -> Choice:
    soup = _uniform(list(range(scorer.experts)), scorer.experts)
    return Choice(soup, scorer.evaluate([soup])[0].utility)


def greedy_soup(scorer: Scorer, experts: ExpertScores) -> Choice:
    """Wortsman et al. 2022: add experts in order of dev utility, keep each one that does not
    lower the soup's dev utility; the soup is their uniform average."""
    shared = experts.shared()
    ranking = experts.ranking()
    values = experts.values()
    chosen, best = [ranking[0]], values[ranking[0]]
    for k in ranking[1:]:
        utility = scorer.evaluate([_uniform([*chosen, k], scorer.experts)])[0].utility
        if utility >= best:
            chosen, best = [*chosen, k], utility
    names = [scorer.setup.pool.names[k] for k in chosen]
    return Choice(_uniform(chosen, scorer.experts), best, {"experts": names}, extra_evaluations=shared)


def mergekit_baseline(method: str) -> Callable[[Scorer, ExpertScores], Choice]:
    """A mergekit method, its grid searched on dev (first best point wins)."""

    def run(scorer: Scorer, experts: ExpertScores) -> Choice:
        setup = scorer.setup
        recipe = setup.recipe
        if method in NEEDS_BASE and recipe.base_model is None:
            return Choice(None, -math.inf, note="skipped: needs base_model (the experts' common ancestor)")
        shared = experts.shared() if method == "slerp" else 0
        order = experts.ranking() if method == "slerp" else list(range(scorer.experts))
        candidates = [_merge(scorer, method, params, order) for params in GRIDS[method]]
        results = scorer.evaluate(candidates)
        if all(r.failed for r in results):
            return Choice(None, -math.inf, note=f"failed: {results[0].error}")
        utilities = [r.utility for r in results]
        best = int(np.argmax(utilities))
        settings = dict(GRIDS[method][best])
        if method == "slerp":
            settings["experts"] = [setup.pool.names[k] for k in order[:2]]
        return Choice(candidates[best], utilities[best], settings, extra_evaluations=shared)

    return run


def _merge(scorer: Scorer, method: str, params: dict, order: list[int]) -> MergekitMerge:
    """The mergekit recipe for a grid point, with local paths (to run) and references (to publish)."""
    recipe = scorer.setup.recipe

    def named(name: Callable) -> dict:
        base = name(recipe.base_model) if recipe.base_model is not None else None
        experts = [name(recipe.experts[k]) for k in order]
        if scorer.setup.is_lora:
            assert base is not None  # (LoRA experts need base_model, checked when their pool was opened)
            experts = [lora_reference(base, e) for e in experts]
        return mergekit_recipe(method, params, base=base, experts=experts, dtype=recipe.dtype, out_dtype=recipe.out_dtype)

    return MergekitMerge(named(str), named(recipe.reference))


BASELINE_FUNCTIONS: dict[str, Callable[[Scorer, ExpertScores], Choice]] = {
    "best_expert": best_expert,
    "uniform_soup": uniform_soup,
    "greedy_soup": greedy_soup,
    **{method: mergekit_baseline(method) for method in GRIDS},
}
TITLES = {
    "best_expert": "best single expert",
    "uniform_soup": "uniform soup",
    "greedy_soup": "greedy soup",
    "task_arithmetic": "task arithmetic (mergekit)",
    "ties": "TIES (mergekit)",
    "dare_ties": "DARE-TIES (mergekit)",
    "slerp": "SLERP of the top-2 (mergekit)",
    "model_stock": "Model Stock (mergekit)",
    "random_search": "random search",
    "lorahub": "LoraHub (nevergrad NGOpt)",
    "cma_es": "CMA-ES, per layer (cma)",
}
