"""Model Swarms in coefficient space: pure numpy, no I/O.

The search is driven as ask/tell: `initialize` places the particles, the caller
evaluates `state.positions` and passes the utilities to `observe`, then `step` moves
the swarm, and so on until `state.done`. All randomness comes from `state.rng`, in a
fixed order, so a state restored from disk continues bit for bit:

1. `initialize`: per crossover child, `a, b = rng.choice(k, 2, replace=False)` then
   `t = rng.uniform(0, 2)`; then, for `starting_velocity: random`, per particle
   `j = rng.integers(particles - 1)` (skipping i itself). With `initial: merges` the
   merges take the places after the experts and draw nothing.
2. `step`: one `rng.random((particles, groups, 4))` draw (r_v, r_p, r_g, r_w per
   particle and group), even when `random_factors` is off, so that switching it
   does not change later draws; then, only with evaluation dropout on,
   `rng.choice(particles, k, replace=False)`: the k particles whose next evaluation is
   skipped (k = particles * drop_k // drop_n). A skipped particle keeps its last
   utility; as that is never a strict improvement, it only counts as a stale step.
   Then, only with `stall_probes` on and after an iteration that did not improve the
   global best, `rng.standard_normal((probes, groups, experts))`: the probes' offsets
   (probes = `settings.probe_count(particles)`, fewer if evaluation dropout skips more).

Stray-particle restart uses a cool-down: a restarted particle's stale counter is reset,
so it gets another `restart_patience * patience` iterations before the next restart.
(The official code resets a stuck particle every step; the authors' later
re-implementation adds this cool-down. We follow the latter.)
Failed evaluations (utility -inf) never become a personal, global or worst position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mergekit_swarm.pso.settings import SwarmSettings
from mergekit_swarm.pso.state import SwarmState


def initialize(settings: SwarmSettings, experts: int, groups: int, expert_utilities: Sequence[float] | None = None) -> SwarmState:
    """Particles start as the experts (and, with `initial: merges`, the simple merges of them, which
    need the experts' utilities), grown by crossover to `settings.particles`."""
    if experts < 2:
        raise ValueError("a swarm needs at least 2 experts")
    if groups < 1:
        raise ValueError("a swarm needs at least 1 parameter group")
    count = settings.particle_count(experts)
    rng = np.random.default_rng(settings.seed)

    positions = np.zeros((count, groups, experts))
    for i in range(experts):
        positions[i, :, i] = 1.0
    seeded = experts
    if settings.initial == "merges":
        if expert_utilities is None or len(expert_utilities) != experts:
            raise ValueError("initial: merges needs the experts' utilities")
        for mix in merges(expert_utilities)[: count - experts]:
            positions[seeded] = mix  # the same mix for every group
            seeded += 1
    for i in range(seeded, count):
        a, b = rng.choice(i, size=2, replace=False)
        t = rng.uniform(0.0, 2.0)  # half interpolation, half extrapolation
        positions[i] = t * positions[a] + (1.0 - t) * positions[b]

    velocities = np.zeros_like(positions)
    if settings.starting_velocity == "random":
        for i in range(count):
            j = int(rng.integers(count - 1))
            j += j >= i
            velocities[i] = positions[j] - positions[i]
    # "zero" keeps zeros; "best" is set by the first `observe`, once g is known.

    return SwarmState(
        positions=positions,
        velocities=velocities,
        utilities=np.full(count, np.nan),
        best_positions=positions.copy(),
        best_utilities=np.full(count, -np.inf),
        global_best=np.zeros((groups, experts)),
        global_worst=np.zeros((groups, experts)),
        stale=np.zeros(count, dtype=np.int64),
        skip=np.zeros(count, dtype=bool),
        rng=rng,
        step_length=settings.step_length,
    )


def merges(expert_utilities: Sequence[float]) -> list[np.ndarray]:
    """The points the simple merges of `initial: merges` start from, as coefficient vectors over the
    experts, most promising first: the uniform soup, the best two experts mixed at t = 0.5, 0.25 and
    0.75 (t on the best one; with two experts t = 0.5 is the uniform soup and is not repeated), and the
    best three averaged. Failed experts (-inf, NaN) rank last."""
    n = len(expert_utilities)
    values = [u if np.isfinite(u) else -np.inf for u in expert_utilities]
    ranked = sorted(range(n), key=lambda k: -values[k])  # stable: ties keep expert order
    points = [np.full(n, 1.0 / n)]
    best, second = ranked[0], ranked[1]
    for t in (0.25, 0.75) if n == 2 else (0.5, 0.25, 0.75):
        mix = np.zeros(n)
        mix[best], mix[second] = t, 1.0 - t
        points.append(mix)
    if n >= 4:  # with three experts the best three are the uniform soup
        mix = np.zeros(n)
        mix[ranked[:3]] = 1.0 / 3
        points.append(mix)
    return points


def observe(state: SwarmState, utilities: Sequence[float], settings: SwarmSettings) -> None:
    """Record the utilities of the current positions; update bests, worst and the stop flag."""
    if state.evaluated or state.done:
        raise RuntimeError("observe() called twice for the same positions")
    values = np.asarray(utilities, dtype=np.float64)
    if values.shape != state.utilities.shape:
        raise ValueError(f"expected {state.utilities.shape[0]} utilities, got {values.shape}")
    values = np.where(np.isnan(values), -np.inf, values)  # a NaN utility is a failed evaluation
    first = state.iteration == 0

    global_improved = False
    for i, value in enumerate(values):
        if value > state.best_utilities[i]:  # strict improvement
            state.best_utilities[i] = value
            state.best_positions[i] = state.positions[i]
            state.stale[i] = 0
        else:
            state.stale[i] += 1
        if value > state.global_best_utility:  # strict: the first particle reaching it wins
            state.global_best_utility = float(value)
            state.global_best[...] = state.positions[i]
            state.global_best_particle = i
            global_improved = True
        if np.isfinite(value) and value < state.global_worst_utility:  # worst ever, strict
            state.global_worst_utility = float(value)
            state.global_worst[...] = state.positions[i]

    state.utilities = values
    state.evaluated = True
    state.global_stale = 0 if global_improved else state.global_stale + 1

    if first and settings.starting_velocity == "best" and np.isfinite(state.global_best_utility):
        state.velocities = state.global_best[None] - state.positions

    if state.global_stale >= settings.patience:
        state.done, state.stop_reason = True, f"global best unchanged for {settings.patience} iterations"
    elif state.iteration >= settings.max_iterations:
        state.done, state.stop_reason = True, f"reached max_iterations = {settings.max_iterations}"


def step(state: SwarmState, settings: SwarmSettings) -> None:
    """Move every particle once (restart strays, normalised velocity update, step decay)."""
    if not state.evaluated or state.done:
        raise RuntimeError("step() needs an evaluated swarm that is not done")
    x, v, p = state.positions, state.velocities, state.best_positions

    stray = state.stale >= settings.restart_after
    if stray.any():
        x[stray] = p[stray]
        v[stray] = 0.0
        state.stale[stray] = 0
        state.restarts += int(stray.sum())

    draws = state.rng.random((*state.shape[:2], 4))
    if not settings.random_factors:
        draws = np.ones_like(draws)
    a = draws * np.array([settings.inertia, settings.cognitive, settings.social, settings.repel])
    total = a.sum(axis=-1, keepdims=True)  # (particles, groups, 1)
    g = state.global_best[None]
    w = state.global_worst[None]
    pull = a[..., 0:1] * v + a[..., 1:2] * (p - x) + a[..., 2:3] * (g - x) + a[..., 3:4] * (x - w)
    new_v = np.divide(pull, total, out=np.zeros_like(pull), where=total > 0)

    state.velocities = new_v
    state.positions = x + state.step_length * new_v
    state.step_length = max(state.step_length * settings.step_decay, settings.min_step_length)
    state.skip = np.zeros_like(state.skip)
    skipped = settings.skipped_per_iteration(state.shape[0])
    if skipped:
        state.skip[state.rng.choice(state.shape[0], size=skipped, replace=False)] = True
    if probes_follow(state, settings):
        _probe_near_global_best(state, settings)
    state.iteration += 1
    state.evaluated = False


def probes_follow(state: SwarmState, settings: SwarmSettings) -> bool:
    """Whether the next `step` moves particles near the global best (`stall_probes`): after an iteration
    that did not improve it, once there is one. The probes pick the particles with the lowest utilities."""
    return bool(settings.probe_count(state.shape[0])) and state.global_stale > 0 and bool(np.isfinite(state.global_best_utility))


def _probe_near_global_best(state: SwarmState, settings: SwarmSettings) -> None:
    """Move the `probe_count` evaluated particles with the lowest utility (ties: lower index first) to
    g + probe_radius * z, z ~ N(0, 1) per coefficient, centred per group so that the probe stays an
    affine combination; their velocity starts at 0. Their personal bests are kept.

    Why: where no particle beats the global best (often the best expert, on a smooth utility such as
    a reward), the swarm's pull towards g makes its steps land short of g or overshoot it; small
    steps around g are what CMA-ES and COBYLA take there, and they find the gains the swarm misses."""
    movable = np.flatnonzero(~state.skip)
    order = movable[np.argsort(state.utilities[movable], kind="stable")]
    chosen = order[: settings.probe_count(state.shape[0])]
    offsets = state.rng.standard_normal((len(chosen), *state.shape[1:]))
    offsets -= offsets.mean(axis=-1, keepdims=True)
    state.positions[chosen] = state.global_best[None] + settings.probe_radius * offsets
    state.velocities[chosen] = 0.0
    state.probes += len(chosen)


def winner(state: SwarmState) -> np.ndarray:
    """The answer of the search: the global best coefficients, shape (groups, experts)."""
    if not np.isfinite(state.global_best_utility):
        raise RuntimeError("no particle has a finite utility yet")
    return state.global_best.copy()
