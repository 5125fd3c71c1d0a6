"""Evaluate one particle: write it into the resident model, run the utility, time it.

A utility that raises, or returns NaN or an infinity, marks the evaluation as failed
(utility -inf, with the error kept for the history) and the search goes on; the loop
decides whether to stop (`--fail-fast`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mergekit_swarm.resident import ResidentModel
from mergekit_swarm.utilities import Score, Utility


@dataclass(frozen=True)
class Evaluation:
    utility: float  # -inf when failed
    seconds: float
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
        start = time.perf_counter()
        self.resident.load(coefficients)
        try:
            with torch.no_grad():
                result = self.utility(self.resident.model, self.resident.tokenizer)
            score = result if isinstance(result, Score) else Score(float(result))
            value = float(score.value)
            if not math.isfinite(value):
                raise ValueError(f"utility returned {value}")
        except Exception as exc:  # any failure of the user's objective is recorded, not fatal
            message = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
            return Evaluation(-math.inf, time.perf_counter() - start, message)
        return Evaluation(value, time.perf_counter() - start, details=dict(score.details))
