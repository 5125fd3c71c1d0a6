"""The intervals `racing: confident` stops on (`utilities.race_bounds`): paired against the personal
best for graded scores, they hold the full-dev value at least as often as asked and are far narrower than
the particle's own; a run of equal scores is not read as certainty; shares right are not paired."""

from __future__ import annotations

import math

import numpy as np

from mergekit_swarm.utilities.race_bounds import confidence_bounds, mean_bounds, paired_bounds, raced_bounds
from mergekit_swarm.utilities.racing import MeanRacer, Partial, TokenMeanRacer
from mergekit_swarm.utilities.score import Score

Z = 1.645  # 95% on each side


def _graded(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A personal best's and a nearby particle's scores in [0, 1] on `n` examples: mostly each example's
    own difficulty, shared by both, plus a little of each point's own (a reward, a rating)."""
    difficulty = rng.beta(2.0, 2.0, n)
    best = np.clip(difficulty + rng.normal(0.0, 0.05, n), 0.0, 1.0)
    particle = np.clip(difficulty - 0.01 + rng.normal(0.0, 0.05, n), 0.0, 1.0)
    return best, particle


def test_confidence_bounds_lie_inside_the_exact_ones_and_tighten_as_slices_come():
    rng = np.random.default_rng(1)
    scores = rng.binomial(1, 0.3, 200).astype(float)
    widths = []
    for m in (25, 50, 100, 150, 199):
        known = {i: float(scores[i]) for i in range(m)}
        exact, confident = mean_bounds(known, 200, (0.0, 1.0)), confidence_bounds(known, 200, (0.0, 1.0), 1.645)
        assert exact[0] <= confident[0] < confident[1] <= exact[1]
        widths.append(confident[1] - confident[0])
    assert widths == sorted(widths, reverse=True) and widths[0] < 0.3  # exact after 25 of 200: 0.875 wide
    all_right = {i: 1.0 for i in range(50)}  # a run of equal scores is not read as certainty
    assert confidence_bounds(all_right, 200, (0.0, 1.0), 1.645)[0] < 0.99


def test_paired_bounds_hold_the_full_value_at_least_as_often_as_asked_and_are_far_narrower():
    rng = np.random.default_rng(0)
    misses = {"low": 0, "high": 0}
    ratios = []
    trials = 400
    for _ in range(trials):
        best, particle = _graded(rng)
        final = float(particle.mean())
        scored = rng.permutation(200)[:50]  # a random sample of dev, as the slices are
        known = {int(i): float(particle[i]) for i in scored}
        low, high = paired_bounds(known, best.tolist(), 1.0, Z)
        misses["low"] += final < low
        misses["high"] += final > high
        alone = confidence_bounds(known, 200, (0.0, 1.0), Z)
        assert alone[0] < alone[1]
        ratios.append((high - low) / (alone[1] - alone[0]))
    assert misses["low"] <= 0.08 * trials and misses["high"] <= 0.08 * trials  # 5% each asked
    assert np.median(ratios) < 0.45  # the shared difficulty cancels out


def test_paired_bounds_of_unrelated_scores_keep_their_error_rate():
    """Where the two points' scores share nothing, the differences spread widely and the interval rests on
    its error terms (the estimate's and the unscored examples' own), not on the adjustment."""
    rng = np.random.default_rng(5)
    misses = {"low": 0, "high": 0}
    trials = 1000
    for _ in range(trials):
        best, particle = rng.binomial(1, 0.5, 200).astype(float), rng.binomial(1, 0.45, 200).astype(float)
        final = float(particle.mean())
        known = {int(i): float(particle[i]) for i in rng.permutation(200)[:50]}
        low, high = paired_bounds(known, best.tolist(), 1.0, Z)
        misses["low"] += final < low
        misses["high"] += final > high
    assert misses["low"] <= 0.07 * trials and misses["high"] <= 0.07 * trials  # 5% each asked; 8% without the
    # unscored examples' own spread, 20% without the estimate's


def test_an_estimate_past_the_scores_floor_is_held_inside_the_exact_range():
    """A personal best at the floor on most examples, a particle at the floor on all it has scored: the
    paired estimate of the rest falls below the floor, and must not be recorded as the particle's value."""
    other = [0.1] * 140 + [1.0] * 60  # ratings / 10 lie in [0.1, 1]
    known = {i: 0.1 for i in [*range(140, 165), *range(25)]}
    assert paired_bounds(known, other, 0.9, 2.0)[1] < 0.1
    low, high = raced_bounds(known, 200, (0.1, 1.0), 2.0, other)
    assert 0.1 == low <= high == 0.1


def test_equal_scores_in_a_row_leave_room_for_the_rest_to_differ():
    other = [1.0] * 100 + [0.0] * 100
    known = {i: other[i] for i in range(0, 200, 8)}  # 25 answers, each the personal best's own
    low, high = paired_bounds(known, other, 1.0, Z)
    assert low < 0.5 < high and high - low > 0.05  # no certainty from agreement alone
    assert raced_bounds(known, 200, (0.0, 1.0), Z, other) == (low, high)  # inside the exact range
    exact = mean_bounds(known, 200, (0.0, 1.0))
    assert exact[0] <= low and high <= exact[1]
    assert raced_bounds(known, 200, (0.0, 1.0), Z, other[:199]) == raced_bounds(known, 200, (0.0, 1.0), Z)  # not all of dev


def test_graded_racers_pair_with_the_personal_best_and_shares_right_do_not():
    rng = np.random.default_rng(1)
    best, particle = _graded(rng)
    known = Partial({"": {int(i): float(particle[i]) for i in rng.permutation(200)[:50]}})
    paired = {"": best.tolist()}

    def racer(pairs: bool) -> MeanRacer:
        return MeanRacer(200, [[tuple(range(200))]], (0.0, 1.0), lambda *args: [], lambda s: Score(sum(s) / 200), pairs)

    graded, shares = racer(True), racer(False)
    assert graded.bounds(known, Z, paired) == raced_bounds(known.scores[""], 200, (0.0, 1.0), Z, best.tolist())
    assert graded.bounds(known, Z, paired) != graded.bounds(known, Z)
    assert shares.bounds(known, Z, paired) == shares.bounds(known, Z) == graded.bounds(known, Z)
    assert graded.bounds(known, None, paired) == graded.bounds(known)  # exact racing: never estimated


def test_token_mean_bounds_paired_with_the_personal_best_are_narrower_and_hold():
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, 6, 200).tolist()
    hardness = rng.gamma(2.0, 0.5, 200)  # per-token loss of each answer, shared by nearby models
    best = [-float(h * t) for h, t in zip(hardness, tokens)]
    sums = [-float((h + rng.normal(0.02, 0.03)) * t) for h, t in zip(hardness, tokens)]
    final = sum(sums) / sum(tokens)
    racer = TokenMeanRacer(tokens, [[tuple(range(200))]], lambda *args: [], lambda s: Score(sum(s) / sum(tokens)))
    paired = {"": best}
    order = rng.permutation(200).tolist()
    for m in (25, 50, 100):
        known = Partial({"": {i: sums[i] for i in order[:m]}})
        low, high = racer.bounds(known, 2.0, paired)
        alone = racer.bounds(known, 2.0)
        assert low <= final <= high <= racer.bounds(known)[1]
        assert high - low < (alone[1] - alone[0]) / 5
    everything = Partial({"": dict(enumerate(sums))})
    assert racer.bounds(everything, 2.0, paired) == racer.bounds(everything, 2.0)  # all known: no estimate
    assert not math.isinf(racer.bounds(Partial({"": {0: sums[0], 1: sums[1]}}), 2.0, paired)[0])
