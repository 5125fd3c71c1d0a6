"""Score candidates of every kind on dev or test, and count the evaluations.

A candidate is either a `Mix` (coefficients over the experts, at some granularity) or a
`MergekitMerge` (a mergekit recipe). Mixes are written into one resident model, exactly as
the swarm's particles are; a resident model at the finest granularity in use serves every
coarser one (a coarse particle is repeated over the fine groups it covers), so one model is
loaded for the whole comparison. Merges are run by mergekit itself (`run_merge`; LoRA
experts are baked into their base as mergekit's `base+adapter` does) into a scratch folder,
loaded, scored and deleted.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mergekit_swarm.commands.compare.curves import Trace
from mergekit_swarm.commands.compare.mergekit_methods import run_mergekit
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.experts.groups import GroupLayout, group_layout
from mergekit_swarm.pso import Granularity
from mergekit_swarm.search.evaluator import Evaluation, LocalEvaluator, Racing, evaluation_of
from mergekit_swarm.search.setup import SearchSetup
from mergekit_swarm.utilities import Split


@dataclass(frozen=True)
class Mix:
    """Coefficients (groups, experts) over the experts, in the layout of `granularity`."""

    coefficients: np.ndarray
    granularity: Granularity = "model"


@dataclass(frozen=True)
class MergekitMerge:
    """A mergekit recipe to run (local paths) and the same recipe to publish (Hub ids or paths)."""

    config: dict
    published: dict = field(default_factory=dict)


Candidate = Mix | MergekitMerge

LORA_CACHE = "lora-merge-cache"  # LoRA experts baked into their base for mergekit, in the work folder
_FINENESS = {"model": 0, "layer": 1, "tensor": 2}


class Scorer:
    """One resident model, the dev and test utilities, and a count of dev evaluations."""

    def __init__(self, setup: SearchSetup, options: RunOptions, work: Path, granularities: Sequence[Granularity], seed: int = 0):
        finest = max(granularities, key=_FINENESS.__getitem__, default="model")
        self.setup, self.options, self.work, self.seed = setup, options, work, seed
        wanted: tuple[Granularity, ...] = ("model", *granularities)
        self.layouts = {g: group_layout(setup.pool, g) for g in set(wanted)}
        self.fine = self.layouts[finest]  # the resident model's: every coarser mix is refined to it
        # mixes are scored like a run's particles: as many together as `evaluation: particles_per_batch` says
        batch = setup.recipe.evaluation.particles_per_batch
        slots = setup.slots(batch, setup.recipe.swarm.particle_count(len(setup.pool)))
        self._engine = LocalEvaluator.open(setup, options, slots, layout=self.fine, fewer_slots=batch == "auto")
        self._expand = {g: _refinement(self.fine, layout, setup.pool.tensor_names) for g, layout in self.layouts.items()}
        self.evaluations = 0  # dev evaluations so far, of every method
        self._trace: Trace[Candidate] | None = None

    @property
    def experts(self) -> int:
        return len(self.setup.pool)

    def layout(self, granularity: Granularity) -> GroupLayout:
        if granularity not in self.layouts:
            self.layouts[granularity] = layout = group_layout(self.setup.pool, granularity)
            self._expand[granularity] = _refinement(
                self.fine, layout, self.setup.pool.tensor_names
            )  # raises if it is finer than the resident model's
        return self.layouts[granularity]

    @property
    def splits(self) -> tuple[Split, ...]:
        return self._engine.splits

    def has_test(self) -> bool:
        return "test" in self.splits

    @contextlib.contextmanager
    def tracing(self) -> Iterator[Trace[Candidate]]:
        """Offer every dev evaluation made inside to a new `Trace` (a method's budget curve)."""
        self._trace = trace = Trace()
        try:
            yield trace
        finally:
            self._trace = None

    def evaluate(self, candidates: Sequence[Candidate], split: Split = "dev", *, counted: bool = True) -> list[Evaluation]:
        return list(self.iter_evaluate(candidates, split, counted=counted))

    def iter_evaluate(
        self, candidates: Sequence[Candidate], split: Split = "dev", *, counted: bool = True, racing: Racing | None = None
    ) -> Iterator[Evaluation]:
        """One evaluation per candidate, in order (consecutive mixes share adapter-slot passes).
        Evaluations on dev (or its parts) are `counted` against the method's budget, unless they
        are for the report only. `racing` (the swarm's, for candidates that are all mixes): see
        `LocalEvaluator.evaluate`."""
        if racing is not None and not all(isinstance(c, Mix) for c in candidates):
            raise ValueError("only mixes race")
        i = 0
        while i < len(candidates):
            candidate = candidates[i]
            if isinstance(candidate, MergekitMerge):
                result = self._evaluate_merge(candidate, split)
                if counted:
                    self._count(split, candidate, result)
                i += 1
                yield result
                continue
            j = i
            mixes: list[Mix] = []
            while j < len(candidates) and isinstance(mix := candidates[j], Mix):
                mixes.append(mix)
                j += 1
            fine = [self._refine(c) for c in mixes]
            for mix, result in zip(mixes, self._engine.evaluate(fine, split, racing)):
                if counted:
                    self._count(split, mix, result)
                yield result
            i = j

    def finish(self, mixes: Sequence[Mix], stopped: Sequence[Evaluation], split: Split = "dev") -> list[Evaluation]:
        """Mixes that racing stopped, scored on the rest of dev (see `LocalEvaluator.finish`)."""
        return self._engine.finish([self._refine(m) for m in mixes], stopped, split)

    def mix_evaluator(self, granularity: Granularity) -> _MixEvaluator:
        """A dev evaluator of particles in `granularity`'s layout, for the search loop."""
        self.layout(granularity)
        return _MixEvaluator(self, granularity)

    def _count(self, split: Split, candidate: Candidate, result: Evaluation) -> None:
        if split != "test":  # dev, or with a holdout either part of it
            self.evaluations += 1
            if self._trace is not None and split != "holdout" and result.stopped is None:  # (racing: only full utilities)
                self._trace.offer(candidate, result.utility)

    def _refine(self, mix: Mix) -> np.ndarray:
        self.layout(mix.granularity)
        return np.ascontiguousarray(mix.coefficients[self._expand[mix.granularity]])

    def _evaluate_merge(self, merge: MergekitMerge, split: Split) -> Evaluation:
        from transformers import AutoModelForCausalLM

        start = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=self.work, prefix="merge-") as folder:
            try:
                run_mergekit(merge.config, Path(folder), self.options, lora_cache=self.work / LORA_CACHE, seed=self.seed)
            except Exception as exc:  # a method that cannot merge these experts is that method's failure
                return evaluation_of(exc, time.perf_counter() - start)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", trust_remote_code=self.options.trust_remote_code)
            # transformers: `to` is functools.wraps(nn.Module.to), which pyright does not bind as a method, and
            # `generate` types its self as a Protocol transformers' own models fail (pyright finds no generate)
            result = self._engine.score_model(model.to(self.options.device).eval(), split)  # pyright: ignore[reportArgumentType]
            del model
        return replace(result, seconds=time.perf_counter() - start)  # the merge's time included


class _MixEvaluator:
    """A `ParticleEvaluator` for the search loop, for particles of a coarser layout."""

    def __init__(self, scorer: Scorer, granularity: Granularity):
        self.scorer = scorer
        self.granularity: Granularity = granularity

    @property
    def splits(self) -> tuple[Split, ...]:
        return self.scorer.splits

    def evaluate(
        self, particles: Sequence[np.ndarray], split: Split = "dev", racing: Racing | None = None
    ) -> Iterator[Evaluation]:
        return self.scorer.iter_evaluate([Mix(p, self.granularity) for p in particles], split, racing=racing)

    def finish(self, particles: Sequence[np.ndarray], stopped: Sequence[Evaluation], split: Split = "dev") -> list[Evaluation]:
        """Stopped particles scored to the end (already counted when they were stopped)."""
        return self.scorer.finish([Mix(p, self.granularity) for p in particles], stopped, split)

    def close(self) -> None:
        pass  # the scorer's resident model serves every method of the comparison

    def resident_model(self) -> None:
        return None  # mixes of another layout than the resident model's: not one particle of it


def _refinement(fine: GroupLayout, coarse: GroupLayout, tensor_names: Sequence[str]) -> np.ndarray:
    """For each group of `fine`, the group of `coarse` that contains all its tensors."""
    index = np.full(len(fine), -1)
    for fine_group, coarse_group in zip(fine.of_tensor, coarse.of_tensor):
        if index[fine_group] not in (-1, coarse_group):
            raise ConfigError(f"granularity {coarse.granularity!r} does not nest in {fine.granularity!r}")
        index[fine_group] = coarse_group
    return index
