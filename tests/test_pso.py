"""The coefficient-space engine, rule by rule (pure numpy, no models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergekit_swarm import pso
from mergekit_swarm.pso import SwarmSettings, SwarmState


def settings(**overrides) -> SwarmSettings:
    paper = {"initial": "experts", "stall_probes": 0}
    return SwarmSettings(**{"particles": 6, "max_iterations": 40, "patience": 10, **paper, **overrides})


def run(state: SwarmState, s: SwarmSettings, utility, iterations: int) -> None:
    for _ in range(iterations):
        pso.observe(state, [utility(state, i) for i in range(state.shape[0])], s)
        if state.done:
            return
        pso.step(state, s)


def noisy(seed: int = 0):
    rng = np.random.default_rng(seed)
    return lambda state, i: float(rng.random())


@pytest.mark.parametrize("groups", [1, 5])
def test_positions_sum_to_one_and_velocities_to_zero(groups):
    s = settings()
    state = pso.initialize(s, experts=4, groups=groups)
    utility = noisy()
    for _ in range(30):
        np.testing.assert_allclose(state.positions.sum(-1), 1.0, atol=1e-12)
        np.testing.assert_allclose(state.velocities.sum(-1), 0.0, atol=1e-12)
        pso.observe(state, [utility(state, i) for i in range(6)], s)
        if state.done:
            break
        pso.step(state, s)
    assert state.iteration >= 10


def test_particles_start_as_experts_then_crossover_with_documented_draws():
    s = settings(particles=7, seed=3, starting_velocity="zero")
    state = pso.initialize(s, experts=3, groups=2)
    np.testing.assert_array_equal(state.positions[:3, 0], np.eye(3))
    rng = np.random.default_rng(3)
    expected = [np.eye(3)[i] for i in range(3)]
    for i in range(3, 7):
        a, b = rng.choice(i, size=2, replace=False)
        t = rng.uniform(0, 2)
        assert 0 <= t < 2
        expected.append(t * expected[a] + (1 - t) * expected[b])
    np.testing.assert_array_equal(state.positions[:, 0], np.array(expected))
    np.testing.assert_array_equal(state.positions[:, 0], state.positions[:, 1])  # one t per child, all groups


def test_default_particle_count_is_twice_the_experts():
    assert pso.initialize(SwarmSettings(initial="experts"), experts=3, groups=1).shape == (6, 1, 3)
    with pytest.raises(ValueError, match="fewer than the 4 experts"):
        SwarmSettings(particles=3).particle_count(4)


def test_starting_velocity_modes():
    zero = pso.initialize(settings(starting_velocity="zero"), 3, 1)
    assert not zero.velocities.any()

    random = pso.initialize(settings(starting_velocity="random"), 3, 1)
    for i in range(6):
        targets = random.velocities[i] + random.positions[i]
        assert any(np.allclose(targets, random.positions[j]) for j in range(6) if j != i)

    s = settings(starting_velocity="best")
    best = pso.initialize(s, 3, 1)
    assert not best.velocities.any()
    pso.observe(best, [0.1, 0.9, 0.3, 0.2, 0.5, 0.4], s)
    np.testing.assert_array_equal(best.velocities, best.positions[1][None] - best.positions)


def test_personal_and_global_best_need_strict_improvement_first_particle_wins():
    s = settings(starting_velocity="zero")
    state = pso.initialize(s, 3, 1)
    pso.observe(state, [0.5, 0.7, 0.7, 0.1, 0.2, 0.3], s)
    assert state.global_best_particle == 1
    first_best = state.global_best.copy()
    pso.step(state, s)
    pso.observe(state, [0.5, 0.7, 0.6, 0.05, 0.2, 0.3], s)  # ties only: nothing improves
    np.testing.assert_array_equal(state.global_best, first_best)
    assert state.global_best_particle == 1
    assert list(state.stale) == [1, 1, 1, 1, 1, 1]
    assert state.global_stale == 1


def test_worst_is_worst_ever_and_failed_evaluations_never_count():
    s = settings(starting_velocity="zero")
    state = pso.initialize(s, 3, 1)
    pso.observe(state, [0.5, 0.6, 0.7, 0.2, float("nan"), 0.3], s)
    assert state.global_worst_utility == 0.2
    worst = state.positions[3].copy()
    np.testing.assert_array_equal(state.global_worst, worst)
    assert state.utilities[4] == -np.inf and state.best_utilities[4] == -np.inf
    pso.step(state, s)
    pso.observe(state, [0.9, 0.9, 0.9, 0.9, -np.inf, 0.9], s)  # all better: worst stays
    assert state.global_worst_utility == 0.2
    np.testing.assert_array_equal(state.global_worst, worst)


def test_update_rule_without_random_factors_by_hand():
    s = settings(
        random_factors=False, starting_velocity="random", inertia=0.4, cognitive=0.3, social=0.2, repel=0.1, step_length=0.5
    )
    state = pso.initialize(s, 3, 1)
    pso.observe(state, [0.3, 0.9, 0.1, 0.5, 0.6, 0.2], s)
    x, v, p = state.positions.copy(), state.velocities.copy(), state.best_positions.copy()
    g, w = x[1], x[2]
    pso.step(state, s)
    expected_v = (0.4 * v + 0.3 * (p - x) + 0.2 * (g - x) + 0.1 * (x - w)) / 1.0
    np.testing.assert_allclose(state.velocities, expected_v, atol=1e-15)
    np.testing.assert_allclose(state.positions, x + 0.5 * expected_v, atol=1e-15)


def test_step_length_decays_to_its_floor():
    s = settings(step_length=1.0, step_decay=0.5, min_step_length=0.2, patience=100)
    state = pso.initialize(s, 3, 1)
    lengths = []
    run_utility = noisy(1)
    for _ in range(5):
        pso.observe(state, [run_utility(state, i) for i in range(6)], s)
        pso.step(state, s)
        lengths.append(state.step_length)
    assert lengths == [0.5, 0.25, 0.2, 0.2, 0.2]


def test_stray_particles_restart_with_cool_down():
    s = settings(patience=100, restart_patience=0.03)  # restart after 3 stale iterations
    state = pso.initialize(s, 3, 1)

    def utility(st, i):  # particle 0 peaks at iteration 0 and never improves; the others always do
        return (1.0 if st.iteration == 0 else 0.0) if i == 0 else 0.01 * st.iteration + 0.001 * i

    restarted_at = []
    for _ in range(10):
        pso.observe(state, [utility(state, i) for i in range(6)], s)
        before = state.restarts
        pso.step(state, s)
        if state.restarts > before:
            restarted_at.append(state.iteration - 1)
    # stale for 3 iterations at 3, then (counter reset) again at 6 and 9
    assert restarted_at == [3, 6, 9]
    assert state.restarts == 3


def test_restarted_particle_moves_from_its_personal_best_with_zero_velocity():
    s = settings(patience=100, restart_patience=0.01, random_factors=False, starting_velocity="random")
    state = pso.initialize(s, 3, 1)
    pso.observe(state, [0.5, 0.9, 0.1, 0.2, 0.3, 0.4], s)
    pso.step(state, s)
    pso.observe(state, [0.0, 0.9, 0.1, 0.2, 0.3, 0.4], s)  # particle 0 went stale once: restart
    p, g, w = state.best_positions[0].copy(), state.global_best.copy(), state.global_worst.copy()
    lam = state.step_length
    pso.step(state, s)
    expected_v = (s.social * (g - p) + s.repel * (p - w)) / (s.inertia + s.cognitive + s.social + s.repel)
    np.testing.assert_allclose(state.velocities[0], expected_v, atol=1e-15)
    np.testing.assert_allclose(state.positions[0], p + lam * expected_v, atol=1e-15)


def test_stops_on_patience_and_on_max_iterations():
    s = settings(patience=3, max_iterations=50)
    state = pso.initialize(s, 3, 1)
    run(state, s, lambda st, i: 0.5, 100)
    assert state.done and state.iteration == 3 and "unchanged for 3" in state.stop_reason

    s = settings(patience=100, max_iterations=4)
    state = pso.initialize(s, 3, 1)
    run(state, s, lambda st, i: st.iteration + i / 10, 100)
    assert state.done and state.iteration == 4 and "max_iterations" in state.stop_reason
    assert state.global_best_utility == 4.5


@pytest.mark.parametrize("probes", [0, 0.3])
def test_state_round_trips_through_json_and_continues_bit_for_bit(probes):
    s = settings(particles=7, patience=100, max_iterations=30, stall_probes=probes)
    state = pso.initialize(s, 4, 3)
    utility = lambda st, i: float(np.sin(st.positions[i].sum() * 7 + i))  # noqa: E731
    run(state, s, utility, 5)
    restored = SwarmState.from_dict(json.loads(json.dumps(state.to_dict())))
    run(state, s, utility, 10)
    run(restored, s, utility, 10)
    for name in (
        "positions",
        "velocities",
        "utilities",
        "best_positions",
        "best_utilities",
        "global_best",
        "global_worst",
        "stale",
    ):
        np.testing.assert_array_equal(getattr(state, name), getattr(restored, name))
    scalars = (
        "global_best_utility",
        "global_best_particle",
        "global_worst_utility",
        "global_stale",
        "step_length",
        "iteration",
        "evaluated",
        "restarts",
        "probes",
        "done",
        "stop_reason",
    )
    assert [getattr(state, k) for k in scalars] == [getattr(restored, k) for k in scalars]
    assert state.rng.bit_generator.state == restored.rng.bit_generator.state
    assert (state.probes > 0) == (probes > 0)


def test_all_zero_terms_are_rejected():
    with pytest.raises(ValueError, match="could never move"):
        SwarmSettings(inertia=0, cognitive=0, social=0, repel=0)


def test_min_step_length_cannot_exceed_step_length():
    with pytest.raises(ValueError, match="min_step_length"):
        SwarmSettings(step_length=0.1, min_step_length=0.5)


def test_evaluation_dropout_skips_a_fixed_share_with_documented_draws():
    s = settings(particles=6, drop_k=1, drop_n=3, patience=100, seed=9)
    assert s.skipped_per_iteration(6) == 2
    state = pso.initialize(s, 3, 1)
    mirror = np.random.default_rng(9)  # replay initialize's draws: crossover (3 children), random starting velocities
    for i in range(3, 6):
        mirror.choice(i, size=2, replace=False), mirror.uniform(0, 2)
    for _ in range(6):
        mirror.integers(5)
    assert not state.skip.any()  # the initial evaluation is never skipped
    utility = noisy(3)
    for _ in range(5):
        pso.observe(state, [utility(state, i) for i in range(6)], s)
        pso.step(state, s)
        mirror.random((6, 1, 4))
        expected = np.zeros(6, dtype=bool)
        expected[mirror.choice(6, size=2, replace=False)] = True
        np.testing.assert_array_equal(state.skip, expected)
    restored = SwarmState.from_dict(json.loads(json.dumps(state.to_dict())))
    np.testing.assert_array_equal(restored.skip, state.skip)


def test_a_reused_utility_never_improves_a_best():
    s = settings(particles=4, drop_k=1, drop_n=2, patience=100)
    state = pso.initialize(s, 2, 1)
    pso.observe(state, [0.1, 0.9, 0.5, 0.3], s)
    best, best_utilities, worst = state.global_best.copy(), state.best_utilities.copy(), state.global_worst_utility
    pso.step(state, s)
    reused = [state.utilities[i] if state.skip[i] else 0.0 for i in range(4)]  # what the loop passes for skipped ones
    pso.observe(state, reused, s)
    np.testing.assert_array_equal(state.global_best, best)
    np.testing.assert_array_equal(state.best_utilities, best_utilities)
    assert state.global_worst_utility == min(worst, 0.0)
    assert list(state.stale) == [1, 1, 1, 1]


def test_drop_k_must_leave_some_evaluations():
    with pytest.raises(ValueError, match="drop_k .* must be smaller than drop_n"):
        SwarmSettings(drop_k=2, drop_n=2)


def test_initial_merges_is_the_default():
    assert SwarmSettings().initial == "merges"


def test_initial_merges_start_where_the_simple_merges_are():
    settings = SwarmSettings(particles=12, initial="merges", seed=3)
    utilities = [0.2, 0.7, float("-inf"), 0.5, 0.1]  # best: expert 1, then 3, then 0; expert 2 failed
    state = pso.initialize(settings, 5, 2, utilities)
    positions = state.positions[:, 0]
    np.testing.assert_array_equal(positions[:5], np.eye(5))
    np.testing.assert_allclose(positions[5], np.full(5, 0.2))  # the uniform soup
    for row, t in zip(positions[6:9], (0.5, 0.25, 0.75)):  # the best two, t on the best
        np.testing.assert_allclose(row, t * np.eye(5)[1] + (1 - t) * np.eye(5)[3])
    np.testing.assert_allclose(positions[9], (np.eye(5)[1] + np.eye(5)[3] + np.eye(5)[0]) / 3)
    assert np.allclose(state.positions.sum(-1), 1) and np.array_equal(state.positions[:, 0], state.positions[:, 1])
    # crossovers fill the rest, from the same draws as the paper's initialisation makes for them
    paper = pso.initialize(SwarmSettings(particles=12, seed=3, initial="experts"), 5, 2)
    assert not np.allclose(positions[10:], paper.positions[10:, 0])
    with pytest.raises(ValueError, match="needs the experts' utilities"):
        pso.initialize(settings, 5, 2)


def test_initial_merges_fit_a_small_swarm_and_experts_mode_ignores_utilities():
    small = pso.initialize(SwarmSettings(particles=4, initial="merges"), 3, 1, [0.1, 0.3, 0.2])
    np.testing.assert_allclose(small.positions[3, 0], np.full(3, 1 / 3))  # only the first merge fits
    a = pso.initialize(SwarmSettings(seed=5, initial="experts"), 4, 2)
    b = pso.initialize(SwarmSettings(seed=5, initial="experts"), 4, 2, [0.1, 0.9, 0.3, 0.2])
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.velocities, b.velocities)


def test_initial_merges_of_two_experts_do_not_repeat_the_uniform_soup():
    state = pso.initialize(SwarmSettings(particles=5, initial="merges"), 2, 1, [0.1, 0.3])
    np.testing.assert_allclose(state.positions[2:, 0], [[0.5, 0.5], [0.75, 0.25], [0.25, 0.75]])


def test_start_swarm_evaluates_the_experts_once():
    from mergekit_swarm.experts.groups import GroupLayout
    from mergekit_swarm.search.evaluator import Evaluation
    from mergekit_swarm.search.loop import start_swarm

    class Recorder:
        splits = ("dev",)

        def __init__(self):
            self.seen = []

        def evaluate(self, particles, split="dev", racing=None):
            for p in particles:
                self.seen.append(p.copy())
                yield Evaluation(float(p[0] @ np.arange(1, 4)), 0.0)

    layout = GroupLayout("model", ("model",), ())
    recorder = Recorder()
    state, known = start_swarm(SwarmSettings(particles=6, initial="merges"), recorder, 3, layout)
    assert len(recorder.seen) == 3 and sorted(known) == [0, 1, 2]
    assert [known[k].utility for k in range(3)] == [1.0, 2.0, 3.0]
    np.testing.assert_allclose(state.positions[4, 0], [0, 0.5, 0.5])  # the best two: experts 2 and 1
    state, known = start_swarm(SwarmSettings(particles=6, initial="experts"), recorder, 3, layout)
    assert known == {} and len(recorder.seen) == 3  # the paper's start evaluates nothing up front


def test_half_the_swarm_probes_by_default_and_none_in_the_papers_mode():
    assert SwarmSettings().stall_probes == 0.5
    assert [SwarmSettings().probe_count(n) for n in (2, 5, 10, 20)] == [1, 3, 5, 10]
    for s, probes in ((settings(patience=100, stall_probes=0.5), 3 * 5), (settings(patience=100), 0)):
        state = pso.initialize(s, 3, 1)
        run(state, s, lambda st, i: 0.5, 6)  # never improves after the first evaluation: 5 stalled steps
        assert state.probes == probes


def test_after_a_stalled_iteration_the_worst_particles_probe_near_the_global_best_with_documented_draws():
    s_plain = settings(particles=6, patience=100, seed=5)
    s = settings(particles=6, patience=100, seed=5, stall_probes=1 / 3, probe_radius=0.2)
    plain, probed = pso.initialize(s_plain, 3, 2), pso.initialize(s, 3, 2)
    first = [0.5, 0.9, 0.2, 0.7, 0.1, 0.6]
    for state, st in ((plain, s_plain), (probed, s)):
        pso.observe(state, first, st)
        pso.step(state, st)  # the first evaluation improved the global best (from -inf): no probes yet
    np.testing.assert_array_equal(probed.positions, plain.positions)
    assert probed.probes == 0

    second = [0.4, 0.8, 0.3, 0.05, 0.6, 0.3]  # nothing beats 0.9: a stalled iteration
    rng = np.random.default_rng()
    rng.bit_generator.state = probed.rng.bit_generator.state
    for state, st in ((plain, s_plain), (probed, s)):
        pso.observe(state, second, st)
        pso.step(state, st)
    rng.random((6, 2, 4))  # the step's own draw
    offsets = rng.standard_normal((2, 2, 3))
    offsets -= offsets.mean(axis=-1, keepdims=True)
    chosen = [3, 2]  # the lowest utilities, lowest first (0.05, then 0.3 at index 2 before index 5)
    np.testing.assert_array_equal(probed.positions[chosen], probed.global_best[None] + 0.2 * offsets)
    np.testing.assert_array_equal(probed.velocities[chosen], 0.0)
    np.testing.assert_allclose(probed.positions.sum(-1), 1.0, atol=1e-12)  # still affine combinations
    others = [0, 1, 4, 5]
    np.testing.assert_array_equal(probed.positions[others], plain.positions[others])
    np.testing.assert_array_equal(probed.best_positions, plain.best_positions)  # personal bests are kept
    assert probed.probes == 2
    assert probed.rng.bit_generator.state == rng.bit_generator.state


def test_probes_skip_particles_whose_evaluation_is_dropped():
    s = settings(particles=6, patience=100, drop_k=1, drop_n=2, stall_probes=5 / 6)
    state = pso.initialize(s, 3, 1)
    pso.observe(state, [0.5, 0.9, 0.2, 0.7, 0.1, 0.6], s)
    pso.step(state, s)
    pso.observe(state, [state.utilities[i] if state.skip[i] else 0.0 for i in range(6)], s)
    before = state.positions.copy()
    pso.step(state, s)
    moved = np.flatnonzero(np.abs(state.velocities).sum(axis=(1, 2)) == 0)
    assert state.probes == 3  # only the three evaluated particles can probe
    assert not state.skip[moved].any()
    assert not np.array_equal(state.positions, before)


def test_a_state_lacking_a_field_is_refused_no_migration_before_1_0():
    """States of earlier versions are refused by the checkpoint's format (docs/cli.md), never patched up."""
    s = settings()
    state = pso.initialize(s, 3, 1)
    data = json.loads(json.dumps(state.to_dict()))
    assert SwarmState.from_dict(data).probes == 0
    del data["probes"]  # a state written before probes existed
    with pytest.raises(KeyError):
        SwarmState.from_dict(data)
    del data["iteration"]
    with pytest.raises(KeyError):
        SwarmState.from_dict(data)


def test_failed_particles_probe_first_and_no_probe_without_a_finite_global_best():
    s = settings(particles=4, patience=100, stall_probes=0.25)
    state = pso.initialize(s, 2, 1)
    pso.observe(state, [0.5, 0.9, 0.2, 0.7], s)
    pso.step(state, s)
    pso.observe(state, [0.1, float("nan"), 0.3, 0.2], s)  # a failed evaluation, and no improvement
    pso.step(state, s)
    assert state.probes == 1 and np.all(state.velocities[1] == 0)  # the failed particle probes

    failed = pso.initialize(s, 2, 1)
    pso.observe(failed, [float("nan")] * 4, s)
    pso.step(failed, s)
    pso.observe(failed, [float("nan")] * 4, s)
    pso.step(failed, s)
    assert failed.probes == 0  # no global best to probe around
