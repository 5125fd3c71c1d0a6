"""Evaluate particles: write them into the resident model, run the utility, time it.

The search talks to a `ParticleEvaluator`: `LocalEvaluator` (the default) holds one resident
model in this process; `RayEvaluator` (`evaluation: {backend: ray}`) spreads the same work
over Ray actors that each hold one (see `ray_backend`). Both give the same results in
particle order.

Particles are evaluated in groups of the resident model's slot count: for LoRA pools a
group is written into adapter slots in one pass and, when the utility can, scored in
mixed-adapter batches (`Utility.score_adapters`); otherwise each slot is activated and
scored in turn. A utility that raises, or returns NaN or an infinity, marks the evaluation
as failed (utility -inf, with the error kept for the history) and the search goes on; the
loop decides whether to stop (`--fail-fast`). A group whose batched scoring raises is
scored again one particle at a time, so every particle gets its own result or error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from mergekit_swarm.resident import ResidentModel
from mergekit_swarm.utilities import Score, Split, Utility
from mergekit_swarm.utilities.text import batches

if TYPE_CHECKING:
    from mergekit_swarm.config import SwarmRecipe
    from mergekit_swarm.options import RunOptions
    from mergekit_swarm.run import SearchSetup
    from mergekit_swarm.search.settings import EvaluationSettings


@dataclass(frozen=True)
class Evaluation:
    utility: float  # -inf when failed
    seconds: float  # for a group evaluated together: its share of the group's time
    error: str | None = None
    details: dict[str, float] = field(default_factory=dict)  # a Score's details (components, counts)

    @property
    def failed(self) -> bool:
        return self.error is not None


class Evaluator:
    """Scores coefficient arrays with one utility on the resident model."""

    def __init__(self, resident: ResidentModel, utility: Utility):
        self.resident, self.utility = resident, utility

    def __call__(self, coefficients: np.ndarray) -> Evaluation:
        return next(self.evaluate([coefficients]))

    def evaluate(self, particles: Sequence[np.ndarray]) -> Iterator[Evaluation]:
        """One evaluation per particle, in order, each yielded as soon as it is known."""
        for group in batches(particles, self.resident.slots):
            yield from self._evaluate_group(list(group))

    def _evaluate_group(self, group: list[np.ndarray]) -> Iterator[Evaluation]:
        start = time.perf_counter()
        slots = self.resident.load_many(group)
        if len(group) > 1 and self.utility.scores_adapter_batches:
            try:
                with torch.no_grad():
                    scores = self.utility.score_adapters(self.resident.model, self.resident.tokenizer, slots)
                if len(scores) != len(group):
                    raise ValueError(f"score_adapters returned {len(scores)} scores for {len(group)} adapters")
            except Exception:  # scored again one by one below, so that each particle gets its own error
                pass
            else:
                share = (time.perf_counter() - start) / len(group)
                yield from (evaluation_of(score, share) for score in scores)
                return
        share = (time.perf_counter() - start) / len(group)  # of writing the group into the model
        for slot in range(len(group)):
            begin = time.perf_counter()
            self.resident.activate(slot)
            score = call_utility(self.utility, self.resident.model, self.resident.tokenizer)
            yield evaluation_of(score, share + time.perf_counter() - begin)
        self.resident.activate(0)


class ParticleEvaluator(Protocol):
    """What the search needs: scores of coefficient arrays, in the order given."""

    splits: tuple[Split, ...]  # the utilities it holds: ("dev",) or ("dev", "test")

    def evaluate(self, particles: Sequence[np.ndarray], split: Split = "dev") -> Iterator[Evaluation]:
        """One evaluation per particle with the `split` utility, in order."""
        ...

    def close(self) -> None:
        """Release the workers (and their models)."""
        ...


class LocalEvaluator:
    """The in-process backend: one resident model and the dev (and test) utilities."""

    def __init__(self, resident: ResidentModel, dev: Utility, test: Utility | None = None):
        self.resident = resident
        self.evaluators: dict[Split, Evaluator] = {"dev": Evaluator(resident, dev)}
        if test is not None:
            self.evaluators["test"] = Evaluator(resident, test)

    @property
    def splits(self) -> tuple[Split, ...]:
        return tuple(self.evaluators)

    def evaluate(self, particles: Sequence[np.ndarray], split: Split = "dev") -> Iterator[Evaluation]:
        return self.evaluators[split].evaluate(particles)

    def close(self) -> None:
        pass  # the resident model stays usable (e.g. to bake the winner with --merge-lora)


def open_evaluator(
    setup: SearchSetup, options: RunOptions, settings: EvaluationSettings, *, recipe: SwarmRecipe, particles: int
) -> ParticleEvaluator:
    """The backend `settings` names, ready to evaluate; `close()` it (Ray: shuts the workers down).

    `recipe` is the recipe as written (Hub models not yet downloaded): Ray workers resolve
    it on their own node. `particles` per iteration bound the workers that can be kept busy.
    """
    if settings.backend == "ray":
        from mergekit_swarm.search.ray_backend import RayEvaluator

        return RayEvaluator(recipe, setup, options, settings, particles=particles)
    return LocalEvaluator(setup.resident_model(options, settings.particles_per_batch), setup.dev, setup.test)


def call_utility(utility: Utility, model, tokenizer) -> float | Score | Exception:
    """What `utility` returns on `model`, or the exception it raised: any failure of the user's
    objective is recorded, not fatal."""
    try:
        with torch.no_grad():
            return utility(model, tokenizer)
    except Exception as exc:
        return exc


def evaluation_of(result: float | Score | Exception, seconds: float) -> Evaluation:
    """An Evaluation from what the utility returned (or raised)."""
    try:
        if isinstance(result, Exception):
            raise result
        score = result if isinstance(result, Score) else Score(float(result))
        value = float(score.value)
        if not math.isfinite(value):
            raise ValueError(f"utility returned {value}")
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
        return Evaluation(-math.inf, seconds, message)
    return Evaluation(value, seconds, details=dict(score.details))
