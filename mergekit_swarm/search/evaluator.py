"""Evaluate particles: write them into the resident model, run the utility, time it.

The search talks to a `ParticleEvaluator`: `LocalEvaluator` (the default) holds one resident
model in this process; `RayEvaluator` (`evaluation: {backend: ray}`) spreads the same work
over Ray actors that each hold one (see `ray_backend`); `backends.open_evaluator` picks one.
Both give the same results in particle order.

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
from typing import Protocol

import numpy as np
import torch

from mergekit_swarm.groups import GroupLayout
from mergekit_swarm.options import RunOptions
from mergekit_swarm.resident import ResidentModel
from mergekit_swarm.search.setup import SearchSetup
from mergekit_swarm.utilities import Score, Split, Utility
from mergekit_swarm.utilities.text import batches


@dataclass(frozen=True)
class Evaluation:
    utility: float  # -inf when failed
    seconds: float  # for a group evaluated together: its share of the group's time
    error: str | None = None
    details: dict[str, float] = field(default_factory=dict)  # a Score's details (components, counts)

    @property
    def failed(self) -> bool:
        return self.error is not None


class ParticleEvaluator(Protocol):
    """The one interface the search talks to: scores of coefficient arrays, in the order given.

    `LocalEvaluator` (in process) and `RayEvaluator` (`ray_backend`) implement it; the search
    loop, the run's test report and `compare` use nothing else.
    """

    splits: tuple[Split, ...]  # the utilities it holds: ("dev",) or ("dev", "test")

    def evaluate(self, particles: Sequence[np.ndarray], split: Split = "dev") -> Iterator[Evaluation]:
        """One evaluation per particle with the `split` utility, in order, each yielded when known."""
        ...

    def close(self) -> None:
        """Release the workers (and their models)."""
        ...


class LocalEvaluator:
    """The in-process engine: one resident model and the utility of each split."""

    def __init__(self, resident: ResidentModel, dev: Utility, test: Utility | None = None):
        self.resident = resident
        self.utilities: dict[Split, Utility] = {"dev": dev, **({"test": test} if test is not None else {})}

    @classmethod
    def open(cls, setup: SearchSetup, options: RunOptions, slots: int = 1, layout: GroupLayout | None = None) -> LocalEvaluator:
        """The setup's resident model (with `slots` adapter slots, for particles of `layout`) and utilities."""
        utilities = setup.utilities
        return cls(setup.resident_model(options, slots, layout), utilities["dev"], utilities.get("test"))

    @property
    def splits(self) -> tuple[Split, ...]:
        return tuple(self.utilities)

    def evaluate(self, particles: Sequence[np.ndarray], split: Split = "dev") -> Iterator[Evaluation]:
        """One evaluation per particle, in order, in groups of the resident model's slot count."""
        utility = self.utilities[split]
        for group in batches(particles, self.resident.slots):
            yield from self._evaluate_group(list(group), utility)

    def score_model(self, model, split: Split = "dev") -> Evaluation:
        """The `split` utility of a model built elsewhere (e.g. by mergekit), with the run's tokenizer."""
        start = time.perf_counter()
        return evaluation_of(call_utility(self.utilities[split], model, self.resident.tokenizer), time.perf_counter() - start)

    def close(self) -> None:
        pass  # the resident model stays usable (e.g. to bake the winner with --merge-lora)

    def _evaluate_group(self, group: list[np.ndarray], utility: Utility) -> Iterator[Evaluation]:
        start = time.perf_counter()
        slots = self.resident.load_many(group)
        if len(group) > 1 and utility.scores_adapter_batches:
            try:
                with torch.no_grad():
                    scores = utility.score_adapters(self.resident.model, self.resident.tokenizer, slots)
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
            score = call_utility(utility, self.resident.model, self.resident.tokenizer)
            yield evaluation_of(score, share + time.perf_counter() - begin)
        self.resident.activate(0)


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
