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
A `SwarmError` from a utility is the exception: it says that no particle can be scored
(e.g. the judge's endpoint is down) and stops the run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from mergekit_swarm.core.errors import SwarmError
from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.core.run_options import ModelAccess
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.search.setup import SearchSetup
from mergekit_swarm.utilities import Score, Split, Utility
from mergekit_swarm.utilities.racing import Partial, RaceLimit, Racer
from mergekit_swarm.utilities.text import NO_ADAPTERS
from mergekit_swarm.weights.device_memory import device_memory, particles_that_fit
from mergekit_swarm.weights.resident import ResidentModel

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    utility: float  # -inf when failed
    seconds: float  # for a group evaluated together: its share of the group's time (see `shared_by`)
    error: str | None = None
    details: dict[str, float] = field(default_factory=dict)  # a Score's details (components, counts)
    fallback: str | None = None  # why the batched scoring of its group failed, when it was scored alone
    per_example: dict[str, tuple[float, ...]] = field(default_factory=dict)  # a Score's, see `utilities.Score`
    examples: int | None = None  # dev examples scored, with racing (None: not counted)
    of: int | None = None  # with racing: the examples of all of dev
    stopped: tuple[float, float] | None = None  # racing stopped it: the bounds of its utility (`utility` is the upper)
    # with racing: its per-example scores (a stopped one's so far, to finish it later; with `racing: confident`
    # and graded scores, a full one's, to pair with)
    partial: Partial | None = field(default=None, compare=False, repr=False)
    finished_from: int | None = None  # racing stopped it after this many examples, then it was scored to the end
    shared_by: int = 1  # particles scored together in one batch with it: their batch took `seconds * shared_by`

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class Racing:
    """`swarm.racing` for one call of `evaluate`: dev scored in `slices` slices, particle i stopped as soon
    as `limits[i]` is settled (None: scored to the end)."""

    slices: int
    limits: Sequence[RaceLimit | None]
    z: float | None = None  # `racing: confident`: the interval's half-width in standard errors (None: exact bounds);
    # it also picks the slices (random examples, or whole batches), fixed by the evaluator's first call


class ParticleEvaluator(Protocol):
    """The one interface the search talks to: scores of coefficient arrays, in the order given.

    `LocalEvaluator` (in process) and `RayEvaluator` (`ray_backend`) implement it; the search
    loop, the run's test report and `compare` use nothing else.
    """

    @property
    def splits(self) -> tuple[Split, ...]:
        """The utilities it holds: ("dev",), ("dev", "test"), and "search", "holdout" with `swarm.holdout`."""
        ...

    def evaluate(
        self, particles: Sequence[np.ndarray], split: Split = "dev", racing: Racing | None = None
    ) -> Iterator[Evaluation]:
        """One evaluation per particle with the `split` utility, in order, each yielded when known;
        with `racing`, where the utility races, a particle may be stopped early (`Evaluation.stopped`)."""
        ...

    def finish(self, particles: Sequence[np.ndarray], stopped: Sequence[Evaluation], split: Split = "dev") -> list[Evaluation]:
        """The particles that racing stopped, scored on the rest of dev: their full evaluations."""
        ...

    def close(self) -> None:
        """Release the workers (and their models)."""
        ...

    def resident_model(self) -> ResidentModel | None:
        """The model particles were written into, when it lives in this process (None on Ray workers)."""
        ...


class LocalEvaluator:
    """The in-process engine: one resident model and the utility of each split.

    LoRA pools: particles are written into the resident model's adapter slots in groups and,
    when the utility can, scored together in one mixed-adapter batch (served stacked, see
    `adapter_stack`). A group whose batched scoring raises is scored again one particle at a
    time (so that each particle gets its own result or error); that fallback is logged once,
    counted (`fallbacks`) and marked on each evaluation. On a GPU, the group size is set by
    measuring one particle's scoring once, and halved on out-of-memory; on a CPU with `auto`, by the
    same measurement against a budget of the model's size (`weights.device_memory`).
    """

    def __init__(
        self, resident: ResidentModel, dev: Utility, test: Utility | None = None, *, parts: dict | None = None, memory=None
    ):
        """`parts`: the utility on the two parts of dev with `swarm.holdout` ("search", "holdout")."""
        self.resident = resident
        self.utilities: dict[Split, Utility] = {"dev": dev, **({"test": test} if test is not None else {}), **(parts or {})}
        self.batch_limit = resident.slots  # particles scored together; lowered to what the device fits
        self.fallbacks = 0  # evaluations scored alone because their group's batched scoring failed
        self._memory = memory if memory is not None else device_memory(resident.device)
        self._measured = self._memory is None
        self._warned: set[str] = set()
        self._racers: dict[Split, Racer | None] = {}

    @classmethod
    def open(
        cls, setup: SearchSetup, options: ModelAccess, slots: int = 1, layout: GroupLayout | None = None, *, fewer_slots=False
    ) -> LocalEvaluator:
        """The setup's resident model (with `slots` adapter slots, for particles of `layout`) and
        utilities; `fewer_slots`: the slots are a wish (`particles_per_batch: auto`), not a must."""
        utilities = setup.utilities
        resident = setup.resident_model(options, slots, layout, fewer_slots=fewer_slots)
        parts = {split: utilities[split] for split in ("search", "holdout") if split in utilities}
        # `auto` on a CPU: batches within a budget of the model's size (`device_memory`)
        memory = device_memory(resident.device, host_model_bytes=resident.nbytes() if fewer_slots else None)
        return cls(resident, utilities["dev"], utilities.get("test"), parts=parts, memory=memory)

    @property
    def splits(self) -> tuple[Split, ...]:
        return tuple(self.utilities)

    def evaluate(
        self, particles: Sequence[np.ndarray], split: Split = "dev", racing: Racing | None = None
    ) -> Iterator[Evaluation]:
        """One evaluation per particle, in order, in groups of at most `batch_limit` particles."""
        utility, pending = self.utilities[split], list(particles)
        racer = self._racer(split, racing)
        limits = list(racing.limits) if racing is not None and racer is not None else [None] * len(pending)
        if not self._measured and len(pending) > 1 and utility.scores_adapter_batches:
            self._measure(pending[0], utility)
        while pending:
            group, pending = pending[: self.batch_limit], pending[self.batch_limit :]
            bounds, limits = limits[: len(group)], limits[len(group) :]
            if racer is not None and racing is not None:
                yield from self._race_group(group, utility, racer, bounds, [Partial() for _ in group], racing.z)
            else:
                yield from self._evaluate_group(group, utility)

    def finish(
        self, particles: Sequence[np.ndarray], stopped: Sequence[Evaluation], split: Split = "dev", racing: Racing | None = None
    ) -> list[Evaluation]:
        """`racing`: how the stopped evaluations were raced, where this evaluator did not race them (a Ray
        worker finishing another's particles)."""
        racer = self._racers.get(split) or self._racer(split, racing)
        if racer is None or any(e.partial is None for e in stopped):
            raise ValueError("finish() takes evaluations that racing stopped, of this evaluator")
        done: list[Evaluation] = []
        for start in range(0, len(particles), self.batch_limit):
            group, evaluations = list(particles[start : start + self.batch_limit]), stopped[start : start + self.batch_limit]
            partials = [e.partial.copy() for e in evaluations if e.partial is not None]
            finished = self._race_group(group, self.utilities[split], racer, [None] * len(group), partials)
            done += [
                replace(e, seconds=e.seconds + before.seconds, finished_from=before.examples)
                for e, before in zip(finished, evaluations)
            ]
        return done

    def _racer(self, split: Split, racing: Racing | None) -> Racer | None:
        """The split utility's racer (built once), when `racing` asks for one and the utility races."""
        if racing is None:
            return None
        if split not in self._racers:
            self._racers[split] = self.utilities[split].racer(self.resident.tokenizer, racing.slices, racing.z is None)
            if self._racers[split] is None:
                self._note(
                    "racing",
                    f"racing: {type(self.utilities[split]).__name__} does not race here ({self.utilities[split].racing_note}); "
                    "every particle is scored on all of dev",
                )
        return self._racers[split]

    def score_model(self, model: CausalLM, split: Split = "dev") -> Evaluation:
        """The `split` utility of a model built elsewhere (e.g. by mergekit), with the run's tokenizer."""
        start = time.perf_counter()
        return evaluation_of(call_utility(self.utilities[split], model, self.resident.tokenizer), time.perf_counter() - start)

    def close(self) -> None:
        pass  # the resident model stays usable (e.g. to bake the winner with --merge-lora)

    def resident_model(self) -> ResidentModel:
        return self.resident

    def _measure(self, particle: np.ndarray, utility: Utility) -> None:
        """Score one particle alone while measuring its peak memory, once per session; batch as many as fit.
        A trial: its result is not used (every evaluation is then scored as in any other session of the
        run, so that a resumed run's history is the uninterrupted one's), at the cost of one evaluation."""
        memory = self._memory
        assert memory is not None  # measured only where there is device memory to measure (`_measured`)
        with memory.peak() as used:
            for _ in self._evaluate_group([particle], utility):
                pass
        self._measured = True
        fit = particles_that_fit(memory.free_bytes(), used[0], self.batch_limit)
        if fit < self.batch_limit:
            self._note("memory", f"{fit} particles per batch fit in {memory.budget} (of {self.batch_limit} adapter slots)")
            self.batch_limit = fit

    def _evaluate_group(self, group: list[np.ndarray], utility: Utility) -> Iterator[Evaluation]:
        start = time.perf_counter()
        slots = self.resident.load_many(group)
        fallback = None
        if len(group) > 1 and utility.scores_adapter_batches:
            try:
                with torch.no_grad():
                    scores = utility.score_adapters(self.resident.model, self.resident.tokenizer, slots)
                if len(scores) != len(group):
                    raise ValueError(f"score_adapters returned {len(scores)} scores for {len(group)} adapters")
            except torch.cuda.OutOfMemoryError:  # fewer particles per batch; the same scores
                half = self._fewer_per_batch(len(group))
                for part in (group[:half], group[half:]):
                    yield from self._evaluate_group(part, utility)
                return
            except SwarmError:
                raise  # the run cannot go on: no particle can be scored
            except Exception as exc:  # scored again one by one below, so that each particle gets its own error
                fallback = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                self.fallbacks += len(group)
                self._note("fallback", f"batched scoring failed ({fallback}); its particles are scored one at a time")
            else:
                share = (time.perf_counter() - start) / len(group)
                yield from (replace(evaluation_of(score, share), shared_by=len(group)) for score in scores)
                return
        share = (time.perf_counter() - start) / len(group)  # of writing the group into the model
        for slot in range(len(group)):
            begin = time.perf_counter()
            self.resident.activate(slot)
            score = call_utility(utility, self.resident.model, self.resident.tokenizer)
            yield replace(evaluation_of(score, share + time.perf_counter() - begin), fallback=fallback)
        self.resident.activate(0)

    def _race_group(
        self,
        group: list[np.ndarray],
        utility: Utility,
        racer: Racer,
        limits: Sequence[RaceLimit | None],
        partials: list[Partial],
        z: float | None = None,
    ) -> Iterator[Evaluation]:
        """Score the group slice by slice from where `partials` stand, its live particles together; a
        particle whose limit is settled stops. A slice that fails is scored again without racing."""
        start = time.perf_counter()
        slots = self.resident.load_many(group)
        adapters = slots if len(group) > 1 else None
        stopped: dict[int, tuple[float, float]] = {}
        try:
            for index in range(min(p.slices for p in partials), racer.slices):  # (finishing: each from where it stopped)
                live = [i for i in range(len(group)) if i not in stopped and partials[i].slices <= index]
                if not live:
                    continue
                names = [adapters[i] for i in live] if adapters is not None else NO_ADAPTERS
                with torch.no_grad():
                    scored = racer.score_slice(self.resident.model, self.resident.tokenizer, names, index)
                for i, per_component in zip(live, scored):
                    for component, scores in per_component.items():
                        partials[i].add(component, scores)
                    partials[i].slices = index + 1
                    limit = limits[i]
                    if limit is not None and index + 1 < racer.slices:
                        bounds = racer.bounds(partials[i], z, limit.paired)
                        if limit.settled(*bounds):
                            stopped[i] = bounds
                if len(stopped) == len(group):
                    break
        except torch.cuda.OutOfMemoryError:  # fewer particles per batch; the same scores
            half = self._fewer_per_batch(len(group))
            # each half goes on from where its particles stand: a slice's scores do not depend on its company
            yield from self._race_group(group[:half], utility, racer, limits[:half], partials[:half], z)
            yield from self._race_group(group[half:], utility, racer, limits[half:], partials[half:], z)
            return
        except SwarmError:
            raise
        except Exception as exc:  # scored again in full, one by one, so that each particle gets its own result or error
            self._note("fallback", f"racing failed ({type(exc).__name__}: {exc}); its particles are scored on all of dev")
            # what each had scored before (slices of this call, and when finishing, those before its stop) was a cost too
            before = [p.count() for p in partials]
            evaluations = self._evaluate_group(group, utility)
            yield from (replace(e, examples=racer.examples + n, of=racer.examples) for e, n in zip(evaluations, before))
            return
        self.resident.activate(0)
        share = (time.perf_counter() - start) / len(group)
        for i, partial in enumerate(partials):
            if i in stopped:
                low, high = stopped[i]
                yield Evaluation(
                    high,
                    share,
                    examples=partial.count(),
                    of=racer.examples,
                    stopped=(low, high),
                    partial=partial,
                    shared_by=len(group),
                )
            else:
                result = evaluation_of(racer.result(partial), share)
                result = replace(result, examples=partial.count(), of=racer.examples, shared_by=len(group))
                # graded scores go with it: should it become a personal best, confident racing pairs against them
                yield replace(result, partial=partial) if racer.pairs and z is not None else result

    def _fewer_per_batch(self, size: int) -> int:
        """After a batch of `size` particles ran out of device memory: release the cache and score at most
        half as many together from now on; returns that half."""
        if self._memory is not None:
            self._memory.release()
        self.batch_limit = max(1, size // 2)
        self._note("memory", f"out of memory with {size} particles per batch: continuing with {self.batch_limit}")
        return self.batch_limit

    def _note(self, kind: str, message: str) -> None:
        """Log `message` once per kind (a fallback in every iteration is said once, counted always)."""
        if kind not in self._warned:
            self._warned.add(kind)
            LOG.warning(message)


def call_utility(utility: Utility, model: CausalLM, tokenizer: Tokenizer) -> float | Score | Exception:
    """What `utility` returns on `model`, or the exception it raised: any failure of the user's
    objective is recorded, not fatal; but a `SwarmError` (e.g. the judge's endpoint is down) stops the run."""
    try:
        with torch.no_grad():
            return utility(model, tokenizer)
    except SwarmError:
        raise
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
    return Evaluation(value, seconds, details=dict(score.details), per_example=dict(score.per_example))
