"""The intervals racing stops on: where a particle's utility on all of dev can still lie, given the
examples scored so far (see `utilities.racing`).

- `mean_bounds` (`racing: exact`): the unscored examples anywhere in the scores' range; a proof.
- `confidence_bounds` (`racing: confident`, alone): the unscored examples' mean estimated from the
  scored ones' (Wilson's interval), the scored examples being a random sample of dev.
- `paired_bounds` (`racing: confident`, against the personal best, for graded scores): the unscored
  examples' scores estimated as the personal best's own scores on them plus the mean difference seen
  on the scored ones. A log-likelihood, a reward or a rating depends on the example far more than on
  the particle (some prompts are hard for every nearby model), and the difference of two points'
  scores on one example cancels that part: a paired comparison, narrower.
- `ratio_interval`: the same estimates for a mean over tokens (`nll`), where examples weigh unequally.

Shares right are not paired: right-or-wrong answers of a particle and of the point it last improved
on differ on so many examples that the differences spread as much as the answers themselves, and
Wilson's interval is tight near 0 or 1 right, where such shares often lie (on the toy racing
table, paired shares right saved fewer examples on 2 of 4 cells in trial runs; the graded
utilities, paired, saved more on 4 of 6 cells and stopped none wrongly, where the particle's own
interval had made 19 wrong stops).
`raced_bounds` picks among them for a share or a bounded mean. The estimates are not proofs: a
particle they stop may have been about to beat its personal best (benchmarks/racing.py counts them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Scores = Mapping[int, float]  # example index -> its score


def widened(value: float, towards: float) -> float:
    """`value` moved a few units in the last place towards `towards`: a bound that holds whatever order
    the utility sums its scores in."""
    for _ in range(4):
        value = math.nextafter(value, towards)
    return value


def mean_bounds(scores: Scores, examples: int, score_range: tuple[float, float]) -> tuple[float, float]:
    """The range of the mean over `examples` examples given the `scores` known, the others anywhere in
    `score_range`; widened by a few units in the last place, so that it holds whatever order the
    utility sums its scores in."""
    known = math.fsum(scores.values())
    missing = examples - len(scores)
    low, high = (known + missing * score_range[0]) / examples, (known + missing * score_range[1]) / examples
    low, high = widened(low, -math.inf), widened(high, math.inf)
    return max(low, score_range[0]), min(high, score_range[1])  # a mean stays within its scores' range


def confidence_bounds(scores: Scores, examples: int, score_range: tuple[float, float], z: float) -> tuple[float, float]:
    """A confidence interval for the mean over all `examples` examples, the `scores` known: the mean
    of the unscored ones is bounded by the Wilson score interval (`z` standard errors) of the known
    scores' mean, the scored examples being a random sample of dev (`racing.plan_slices`). Wilson's
    interval holds up at a share of 0 or 1 right (after 0 of 25 right the rest may still be 10% right),
    where the normal one collapses. For scores anywhere in the range, their variance is at most that of
    right-or-wrong scores of the same mean, so the interval is as wide or wider than it needs."""
    m, n = len(scores), examples
    if m >= n:
        return mean_bounds(scores, n, score_range)
    lo, hi = score_range
    known = math.fsum((v - lo) / (hi - lo) for v in scores.values())
    share = known / m
    centre = (share + z * z / (2 * m)) / (1 + z * z / m)
    half = z / (1 + z * z / m) * math.sqrt(share * (1 - share) / m + z * z / (4 * m * m))
    low = (known + (n - m) * max(0.0, centre - half)) / n
    high = (known + (n - m) * min(1.0, centre + half)) / n
    return lo + low * (hi - lo), lo + high * (hi - lo)


def paired_bounds(scores: Scores, other: Sequence[float], width: float, z: float) -> tuple[float, float]:
    """A confidence interval for the mean over every example of `other` (another point's scores on all
    of dev, in example order: the personal best), the `scores` known: on the unscored examples, the
    other's scores plus the mean difference on the scored ones, within `z` standard errors. The error
    counts both the estimate's own and the unscored examples' spread around it (a finite dev).

    The differences lie in [-width, width] (`width`: the scores' range). Agresti and Min's adjustment
    for paired shares widens it where few differences are seen: half an observation at each end of that
    range and one at 0, so that 25 equal answers in a row are not read as no difference at all (after
    them, some 5% of the rest may still differ, enough to tip a close mean either way)."""
    n, m = len(other), len(scores)
    known = math.fsum(scores.values())
    unscored = math.fsum(v for i, v in enumerate(other) if i not in scores)
    differences = [v - other[i] for i, v in scores.items()]
    count = m + 2  # the adjustment's two observations: +width and -width at one half each, 0 at one
    mean = math.fsum(differences) / count
    variance = max(0.0, (math.fsum(d * d for d in differences) + width * width) / count - mean * mean)
    rest = n - m
    error = z * math.sqrt(variance * (rest + rest * rest / count))
    centre = known + unscored + rest * mean
    return (centre - error) / n, (centre + error) / n


def raced_bounds(
    scores: Scores, examples: int, score_range: tuple[float, float], z: float | None, other: Sequence[float] | None = None
) -> tuple[float, float]:
    """Where a mean over `examples` examples within `score_range` can lie, the `scores` known: the exact
    range (`z` None), or inside it a confidence interval of `z` standard errors, paired against `other`
    (the personal best's scores on every example) where given (`paired_bounds`), else the particle's
    own (`confidence_bounds`)."""
    low, high = mean_bounds(scores, examples, score_range)
    if z is None or not scores:
        return low, high
    if other is not None and len(other) == examples:
        estimate = paired_bounds(scores, other, score_range[1] - score_range[0], z)
    else:
        estimate = confidence_bounds(scores, examples, score_range, z)
    return within(estimate, (low, high))


def within(estimate: tuple[float, float], exact: tuple[float, float]) -> tuple[float, float]:
    """An estimated interval held inside the `exact` one. A paired estimate may leave it (the personal
    best's scores plus the mean difference can pass the scores' floor where that point was at the floor),
    and a value outside it would be recorded as the particle's, a new worst point that no stop may make."""
    low, high = exact
    return min(max(low, estimate[0]), high), max(min(high, estimate[1]), low)


def ratio_interval(values: Scores, tokens: Sequence[int], z: float) -> tuple[float, float]:
    """The sum of `values` over the unscored examples, estimated from the scored ones' mean per token
    (a ratio estimate; example i has `tokens[i]` tokens, known beforehand) with its error: `z` times the
    unscored examples' own spread and the error of the rate they are extrapolated with (a normal
    approximation). Needs two values; returns (centre, error)."""
    counted = sum(tokens[i] for i in values)
    rest = sum(tokens) - counted
    rate = math.fsum(values.values()) / counted
    variance = math.fsum((v - rate * tokens[i]) ** 2 for i, v in values.items()) / (len(values) - 1)
    error = math.sqrt((len(tokens) - len(values)) * variance + (rest / counted) ** 2 * len(values) * variance)
    return rate * rest, z * error
