"""What a utility returns: its value, with the details and per-example scores worth keeping."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Score:
    """A utility value with details worth keeping (per-component scores, parse failures),
    which the search records in its history beside the value, and, for a utility that is a mean
    over examples, each example's score in dataset order (1/0 when it is right or wrong), keyed
    by component ("" for a single utility): what the run's correctness report and the quality
    table's paired bootstrap read."""

    value: float
    details: dict[str, float] = field(default_factory=dict)
    per_example: dict[str, tuple[float, ...]] = field(default_factory=dict)


def share_right(hits: tuple[float, ...]) -> Score:
    """The utility of examples each right (1) or wrong (0), in dataset order: the share right."""
    return Score(sum(hits) / len(hits), per_example={"": hits})
