"""What a run measures after its search, for the report only: every expert's and the winner's test
utility (never searched on), their utility on all of dev when the search held part of it out, and,
for a utility that is a share of examples answered right, which examples each of them gets right."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.core.errors import UtilityError
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.search.evaluator import ParticleEvaluator
from mergekit_swarm.utilities import Split
from mergekit_swarm.weights.kernels import one_hot


@dataclass
class Report:
    """Utilities measured after the search (None where not measured) and the splits the evaluator had."""

    splits: tuple[Split, ...]
    expert_dev: list[float | None] | None = None
    winner_dev: float | None = None
    expert_test: list[float | None] | None = None
    winner_test: float | None = None
    examples: dict = field(default_factory=dict)  # split -> which examples the experts and the winner get right


def measure_report(
    evaluator: ParticleEvaluator, recipe: SwarmRecipe, layout: GroupLayout, experts: int, winner: np.ndarray, fail_fast: bool
) -> Report:
    """Score the experts and the winner on test, and on dev where the search saw part of it or which
    examples are right is wanted (`fail_fast`: a failed evaluation is an error)."""
    particles = [one_hot(layout, experts, k) for k in range(experts)] + [winner]
    per_example = recipe.utility.right_or_wrong()
    dev_wanted = per_example or bool(recipe.swarm.holdout)
    measured: dict = {"splits": tuple(evaluator.splits)}
    examples = {}
    reported: tuple[Split, ...] = ("dev", "test")
    measured_splits: list[Split] = [s for s in reported if s in evaluator.splits and (s == "test" or dev_wanted)]
    for split in measured_splits:
        results = list(evaluator.evaluate(particles, split))
        for i, result in enumerate(results):
            if result.failed and fail_fast:
                who = f"expert {i}" if i < experts else "the winner"
                raise UtilityError(f"{split} utility failed on {who}: {result.error}")
        values = [None if r.failed else r.utility for r in results]
        measured[f"expert_{split}"], measured[f"winner_{split}"] = values[:experts], values[experts]
        if per_example and all(r.per_example for r in results):
            examples[split] = {"experts": [r.per_example for r in results[:experts]], "winner": results[experts].per_example}
    return Report(**measured, examples=examples)
