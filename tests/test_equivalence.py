"""Coefficient space == weight space.

A straightforward weight-space Model Swarms (every particle, velocity and best a full set
of tensors, updated as in the paper) is written here, independently of the engine, with
the same random draws. With `granularity: model` the engine's particles, materialised
from real safetensors experts, must match it at every iteration, restarts included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergekit_swarm import pso
from mergekit_swarm.experts import FullModelPool
from mergekit_swarm.experts.groups import group_layout
from mergekit_swarm.weights.kernels import combine

Weights = dict[str, torch.Tensor]


def affine(pairs: list[tuple[float, Weights]]) -> Weights:
    return {k: sum(c * w[k] for c, w in pairs) for k in pairs[0][1]}


class WeightSpaceSwarm:
    """The paper's algorithm on tensors, with the engine's documented draw order."""

    def __init__(self, experts: list[Weights], s: pso.SwarmSettings, utility):
        self.s, self.utility = s, utility
        self.rng = np.random.default_rng(s.seed)
        n, count = len(experts), s.particle_count(len(experts))
        self.x = [dict(e) for e in experts]
        for i in range(n, count):
            a, b = self.rng.choice(i, size=2, replace=False)
            t = self.rng.uniform(0, 2)
            self.x.append(affine([(t, self.x[a]), (1 - t, self.x[b])]))
        self.v = []
        for i in range(count):
            j = int(self.rng.integers(count - 1))
            j += j >= i
            self.v.append(affine([(1.0, self.x[j]), (-1.0, self.x[i])]))
        self.p, self.pu = [dict(x) for x in self.x], [-np.inf] * count
        self.g, self.gu, self.w, self.wu = None, -np.inf, None, np.inf
        self.stale, self.global_stale, self.restarts = [0] * count, 0, 0
        self.step_length, self.iteration = s.step_length, 0

    def evaluate(self) -> bool:
        """Evaluate all particles, update bests; True when the search stops."""
        improved = False
        for i, x in enumerate(self.x):
            u = self.utility(x)
            if u > self.pu[i]:
                self.p[i], self.pu[i], self.stale[i] = dict(x), u, 0
            else:
                self.stale[i] += 1
            if u > self.gu:
                self.g, self.gu, improved = dict(x), u, True
            if u < self.wu:
                self.w, self.wu = dict(x), u
        self.global_stale = 0 if improved else self.global_stale + 1
        return self.global_stale >= self.s.patience or self.iteration >= self.s.max_iterations

    def move(self) -> None:
        s, count = self.s, len(self.x)
        for i in range(count):
            if self.stale[i] >= s.restart_after:
                self.x[i], self.v[i] = dict(self.p[i]), {k: torch.zeros_like(t) for k, t in self.x[i].items()}
                self.stale[i], self.restarts = 0, self.restarts + 1
        r = self.rng.random((count, 1, 4))
        for i in range(count):
            rv, rp, rg, rw = r[i, 0]
            a = [rv * s.inertia, rp * s.cognitive, rg * s.social, rw * s.repel]
            x = self.x[i]
            self.v[i] = {
                k: (a[0] * self.v[i][k] + a[1] * (self.p[i][k] - x[k]) + a[2] * (self.g[k] - x[k]) + a[3] * (x[k] - self.w[k]))
                / sum(a)
                for k in x
            }
            self.x[i] = {k: x[k] + self.step_length * self.v[i][k] for k in x}
        self.step_length = max(self.step_length * s.step_decay, s.min_step_length)
        self.iteration += 1


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("equivalence")
    gen = torch.Generator().manual_seed(0)
    shapes = {"layers.0.w": (16, 8), "layers.0.b": (16,), "layers.1.w": (8, 16), "head.w": (4, 8)}
    weights, paths = [], []
    for k in range(4):
        tensors = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
        (root / f"e{k}").mkdir()
        save_file(tensors, str(root / f"e{k}" / "model.safetensors"))
        weights.append(tensors)
        paths.append(root / f"e{k}")
    target = {name: torch.randn(shape, generator=gen) * 0.5 for name, shape in shapes.items()}
    return weights, paths, target


def test_engine_matches_weight_space_swarm_over_20_iterations_with_restarts(experts):
    weights, paths, target = experts

    def utility(w: Weights) -> float:
        return -sum(float(((w[k].double() - target[k].double()) ** 2).mean()) for k in target)

    s = pso.SwarmSettings(
        particles=7,
        max_iterations=24,
        patience=40,
        restart_patience=0.075,
        step_length=0.8,
        seed=5,
        granularity="model",
        initial="experts",  # the paper's initialisation
        stall_probes=0,  # and its moves only
    )  # restart after 3 stale iterations
    pool = FullModelPool(paths)
    layout = group_layout(pool, "model")
    reference = WeightSpaceSwarm(weights, s, utility)
    state = pso.initialize(s, len(pool), len(layout))

    def materialise(i: int) -> Weights:
        return dict(combine(pool, layout, state.positions[i]))

    worst_gap = 0.0
    while True:
        particles = [materialise(i) for i in range(state.shape[0])]
        for ours, theirs in zip(particles, reference.x):
            for name in ours:
                gap = float((ours[name] - theirs[name]).abs().max())
                worst_gap = max(worst_gap, gap)
                torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-4)
        pso.observe(state, [utility(w) for w in particles], s)
        reference_done = reference.evaluate()
        assert state.done == reference_done
        assert state.global_best_utility == pytest.approx(reference.gu, rel=1e-5)
        if state.done:
            break
        pso.step(state, s)
        reference.move()
        assert state.restarts == reference.restarts

    assert state.iteration >= 20
    assert state.restarts > 0, "the scenario must exercise stray-particle restarts"
    winner = dict(combine(pool, layout, pso.winner(state)))
    for name in winner:
        torch.testing.assert_close(winner[name], reference.g[name], rtol=1e-4, atol=1e-4)
    assert worst_gap < 1e-4
