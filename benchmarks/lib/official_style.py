"""A re-implementation, for comparison only, of how the official Model Swarms code moves
particles: in weight space, on files.

Every particle has folders `now`, `personal_best`, `velocity`, `p_x`, `g_x` and `x_w`
(plus swarm-wide `global_best` and `global_worst`). One update of particle i is five
merges, each of which loads its input weight files whole (`safetensors.torch.load_file`),
computes sum_k w_k * tensor_k in the stored dtype, and saves the result whole
(`save_file`):

    p_x = personal_best - now,   g_x = global_best - now,   x_w = now - global_worst,
    velocity = (a_v velocity + a_p p_x + a_g g_x + a_w x_w) / s,   now = now + lambda velocity.

Every evaluation then loads the particle as a model from disk (LoRA: the base model, then
the adapter), and after the evaluations improved particles are copied folder-wise into
`personal_best`, `global_best` and `global_worst`. This lives in benchmarks/ only.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class OfficialStyleSwarm:
    """Particles as folders of weight files, updated by whole-file merges."""

    def __init__(
        self,
        root: Path,
        experts: list[Path],
        particles: int,
        *,
        weights_file: str,
        load_model: Callable[[Path], torch.nn.Module],
        utility: Callable[[torch.nn.Module], float],
        seed: int = 0,
    ):
        self.root, self.weights_file, self.load_model, self.utility = root, weights_file, load_model, utility
        self.rng = random.Random(seed)
        self.particles = particles
        self.step_length = 1.0
        self.bytes_written = 0
        self._setup(experts)

    def folder(self, i: int, kind: str) -> Path:
        return self.root / f"particle_{i}" / kind

    # ---------------------------------------------------------------- file operations
    def merge(self, weights: list[float], inputs: list[Path], output: Path) -> None:
        """Load every input file whole, weighted sum in the stored dtype, save whole."""
        states = [load_file(str(folder / self.weights_file), device="cpu") for folder in inputs]
        merged = {}
        for k, state in enumerate(states):
            for name, tensor in state.items():
                if k == 0:
                    merged[name] = weights[k] * tensor
                else:
                    merged[name] += weights[k] * tensor
        output.mkdir(parents=True, exist_ok=True)
        save_file(merged, str(output / self.weights_file))
        self.bytes_written += (output / self.weights_file).stat().st_size

    def copy(self, source: Path, target: Path) -> None:
        shutil.copytree(source, target, dirs_exist_ok=True)
        self.bytes_written += sum(p.stat().st_size for p in source.iterdir() if p.is_file())

    # ---------------------------------------------------------------- swarm
    def _setup(self, experts: list[Path]) -> None:
        """Particles start as the experts, grown by crossover; velocities towards another particle."""
        shutil.rmtree(self.root, ignore_errors=True)
        for i in range(self.particles):
            now = self.folder(i, "now")
            if i < len(experts):
                self.copy(experts[i], now)
            else:
                a, b = self.rng.sample(range(i), 2)
                t = self.rng.uniform(0, 2)
                self.copy(self.folder(a, "now"), now)
                self.merge([t, 1 - t], [self.folder(a, "now"), self.folder(b, "now")], now)
        for i in range(self.particles):
            j = self.rng.choice([p for p in range(self.particles) if p != i])
            self.merge([1, -1], [self.folder(j, "now"), self.folder(i, "now")], self.folder(i, "velocity"))
        utilities = [self.evaluate(i) for i in range(self.particles)]
        for i in range(self.particles):
            self.copy(self.folder(i, "now"), self.folder(i, "personal_best"))
        self.best = list(utilities)
        self.g, self.worst = max(utilities), min(utilities)
        self.copy(self.folder(utilities.index(self.g), "now"), self.root / "global_best")
        self.copy(self.folder(utilities.index(self.worst), "now"), self.root / "global_worst")

    def update(self, i: int) -> None:
        """The five merges of one particle's move."""
        r = [self.rng.random() for _ in range(4)]
        a_v, a_p, a_g, a_w = r[0] * 0.4, r[1] * 0.3, r[2] * 0.3, r[3] * 0.3
        s = a_v + a_p + a_g + a_w
        now = self.folder(i, "now")
        self.merge([1, -1], [self.folder(i, "personal_best"), now], self.folder(i, "p_x"))
        self.merge([1, -1], [self.root / "global_best", now], self.folder(i, "g_x"))
        self.merge([-1, 1], [self.root / "global_worst", now], self.folder(i, "x_w"))
        self.merge(
            [a_v / s, a_p / s, a_g / s, a_w / s],
            [self.folder(i, kind) for kind in ("velocity", "p_x", "g_x", "x_w")],
            self.folder(i, "velocity"),
        )
        self.merge([1, self.step_length], [now, self.folder(i, "velocity")], now)

    def evaluate(self, i: int) -> float:
        model = self.load_model(self.folder(i, "now"))
        value = self.utility(model)
        del model
        return value

    def iteration(self) -> dict[str, float]:
        """One iteration; returns its seconds by phase and bytes written."""
        written, start = self.bytes_written, time.perf_counter()
        for i in range(self.particles):
            self.update(i)
        merged = time.perf_counter()
        utilities = [self.evaluate(i) for i in range(self.particles)]
        loaded = time.perf_counter()
        for i, u in enumerate(utilities):
            if u > self.best[i]:
                self.best[i] = u
                self.copy(self.folder(i, "now"), self.folder(i, "personal_best"))
        if max(utilities) > self.g:
            self.g = max(utilities)
            self.copy(self.folder(utilities.index(self.g), "now"), self.root / "global_best")
        if min(utilities) < self.worst:
            self.worst = min(utilities)
            self.copy(self.folder(utilities.index(self.worst), "now"), self.root / "global_worst")
        self.step_length = max(self.step_length * 0.95, 0.1)
        end = time.perf_counter()
        return {
            "seconds": end - start,
            "merge_seconds": merged - start,
            "load_for_evaluation_seconds": loaded - merged,
            "copy_seconds": end - loaded,
            "bytes_written": self.bytes_written - written,
        }
