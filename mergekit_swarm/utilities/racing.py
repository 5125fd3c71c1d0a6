"""Racing: score a particle slice by slice of dev, and stop when it can no longer change the search.

A utility that is a mean over examples, each scored within a known range (exact match and multiple
choice: 0 or 1; by log-likelihood, an example is known once all its choices are scored), can say
after part of dev how high and how low its value on all of dev can still be. `swarm.racing: exact`
stops a particle as soon as that interval lies below its personal best and not below the global
worst: the full-dev value would then change no decision of the search (no personal best, global best
or worst-ever point moves), so the search goes on as if it had been scored in full, bit for bit (see
`search.loop` for stall probes, which rank the particles and are served by scoring the stopped ones
to the end when a probe step follows).

Exactness of the values themselves: with exact racing a slice is made of whole batches of the full
scoring (the same prompts padded together, in the same order), so every example is scored in the
very batch that scoring all of dev puts it in, and a particle that runs every slice gets the value
the utility gives on all of dev.

`swarm.racing: confident` stops on a confidence interval instead (`race_bounds`): far earlier, and
no longer exact: a particle it stops may have been about to beat its personal best. For graded
scores (a log-likelihood, a reward, a rating) its interval compares the particle with its personal
best example by example, where that point's scores on all of dev are kept (`RaceLimit.paired`);
for shares right it estimates the particle's mean alone. Either way it takes the scored examples
for a random sample of dev, so its slices are seeded random shares of the examples (batched by
length within each slice), not whole batches: a batch of prompts of similar lengths is no random
sample. (Every evaluation of such a run is scored in those
slices, so its values agree with each other; against racing off, padding may differ in the last bits.)

Only `confident` races the utilities that score in a company of their own or have no lowest score:
a reward model or a local judge scores a slice's responses in its own batches (their scores may
differ in the last bits from the full scoring's batches), and `nll` (`TokenMeanRacer`) has no finite
low bound, so exact racing could never stop it.

A `Racer` is built per utility and tokenizer: fixed slices (`plan_slices`); `score_slice` scores
one for several adapter slots at once; `bounds` and `result` read the per-example scores gathered
so far (a `Partial`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.utilities.race_bounds import raced_bounds, ratio_interval, widened, within
from mergekit_swarm.utilities.score import Score, share_right
from mergekit_swarm.utilities.text import Adapters, GenerationSettings, generate_for_adapters, model_device, prompt_batches

RACING_SEED = 0  # the order of the slices depends on the data only, not on the swarm's seed

# per adapter slot: example index -> its score, for the examples of one slice (of one component)
SliceScores = dict[int, float]
# a point scored on all of dev (the personal best racing pairs with): per component, every example's score in order
FullScores = dict[str, list[float]]
Batches = Sequence[Sequence[int]]  # batches of example indices, each scored in one pass


@dataclass
class Partial:
    """A particle's per-example scores so far, by component ("" for a single utility), and how
    many slices they cover."""

    scores: dict[str, dict[int, float]] = field(default_factory=dict)
    slices: int = 0

    def add(self, component: str, scores: SliceScores) -> None:
        self.scores.setdefault(component, {}).update(scores)

    def count(self) -> int:
        return sum(len(scores) for scores in self.scores.values())

    def copy(self) -> Partial:
        return Partial({component: dict(scores) for component, scores in self.scores.items()}, self.slices)


@dataclass(frozen=True)
class RaceLimit:
    """What a particle must be shown unable to reach before it is stopped: `best`, its personal best
    (its value must stay at or below it: no improvement, strict in the engine), and `worst`, the global
    worst utility so far (its value must stay at or above it: no new worst point). `paired`: with
    `racing: confident`, the personal best's own scores on all of dev, which the particle's are
    compared with example by example (None: unknown, the particle is estimated alone)."""

    best: float
    worst: float
    paired: FullScores | None = field(default=None, compare=False, repr=False)

    def settled(self, low: float, high: float) -> bool:
        return high <= self.best and low >= self.worst


class Racer(ABC):
    """A utility scored slice by slice (see the module docstring)."""

    examples: int  # examples of dev in all (all components)
    pairs: bool = False  # graded scores, compared with the personal best's under `racing: confident`

    @property
    @abstractmethod
    def slices(self) -> int:
        """How many slices dev is cut into."""

    @abstractmethod
    def score_slice(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters, index: int) -> list[dict[str, SliceScores]]:
        """Slice `index` scored under each of `adapters` (in one mixed-adapter pass where the utility
        can): per adapter, per component, the scores of the slice's examples."""

    @abstractmethod
    def bounds(self, partial: Partial, z: float | None = None, paired: FullScores | None = None) -> tuple[float, float]:
        """The lowest and highest value the utility can take on all of dev, given `partial`; with `z`,
        a confidence interval of `z` standard errors instead, inside those, paired against the scores of
        `paired` (another point scored on all of dev: the personal best) where given (`race_bounds`)."""

    @abstractmethod
    def result(self, partial: Partial) -> Score:
        """The utility on all of dev, from a `partial` that covers every slice: exactly the value
        (and details) that scoring all of dev at once gives."""


def deal_batches(batches: int, slices: int) -> list[list[int]]:
    """Batch indices per slice: a seeded permutation of the batches, dealt out in turn (at most one
    slice per batch), each slice in the batches' own order."""
    order = np.random.default_rng(RACING_SEED).permutation(batches).tolist()
    count = max(1, min(slices, batches))
    return [sorted(order[k::count]) for k in range(count)]


def plan_slices(batches: Batches, slices: int, whole_batches: bool) -> list[list[tuple[int, ...]]]:
    """The batches of each slice, from the utility's own `batches` (examples of similar lengths together).

    `whole_batches` (exact racing): each slice is whole batches of the utility's (`deal_batches`), so
    every example is scored in the batch a full evaluation puts it in, bit for bit. Otherwise
    (confident racing, whose interval takes the scored examples for a random sample of dev): each
    slice is a seeded random share of the examples, batched by length within the slice, because
    a batch of similar lengths is no random sample (length drives difficulty)."""
    if whole_batches:
        return [[tuple(batches[b]) for b in chosen] for chosen in deal_batches(len(batches), slices)]
    order = [i for batch in batches for i in batch]  # by length
    rank = {example: position for position, example in enumerate(order)}
    size = max(len(batch) for batch in batches)
    count = max(1, min(slices, len(order)))
    drawn = np.random.default_rng(RACING_SEED).permutation(order).tolist()
    plan = []
    for k in range(count):
        members = sorted(drawn[k::count], key=rank.__getitem__)
        plan.append([tuple(members[start : start + size]) for start in range(0, len(members), size)])
    return plan


class MeanRacer(Racer):
    """A mean over examples whose scores lie in `score_range`, scored slice by slice.

    `plan`: the batches of each slice (`plan_slices`); `score_batches(model, tokenizer, adapters,
    batches)` scores those batches of examples; `finish(values)` turns every example's score, in
    dataset order, into the utility's `Score` (as its own full scoring does). `pairs`: graded scores,
    compared with the personal best's example by example under `racing: confident` (`race_bounds`);
    shares right are not."""

    def __init__(
        self,
        examples: int,
        plan: list[list[tuple[int, ...]]],
        score_range: tuple[float, float],
        score_batches: Callable[[CausalLM, Tokenizer, Adapters, Batches], list[SliceScores]],
        finish: Callable[[tuple[float, ...]], Score],
        pairs: bool = False,
    ):
        self.examples, self.score_range, self.pairs = examples, score_range, pairs
        self._plan = plan
        self._score_batches, self._finish = score_batches, finish

    @property
    def slices(self) -> int:
        return len(self._plan)

    def score_slice(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters, index: int) -> list[dict[str, SliceScores]]:
        return [{"": scores} for scores in self._score_batches(model, tokenizer, adapters, self._plan[index])]

    def bounds(self, partial: Partial, z: float | None = None, paired: FullScores | None = None) -> tuple[float, float]:
        other = every_score(paired, self.examples) if self.pairs else None
        return raced_bounds(partial.scores.get("", {}), self.examples, self.score_range, z, other)

    def result(self, partial: Partial) -> Score:
        scores = partial.scores.get("", {})
        if len(scores) != self.examples:
            raise ValueError(f"{len(scores)} of {self.examples} examples scored: the particle has not run every slice")
        return self._finish(tuple(scores[i] for i in range(self.examples)))


# scores one adapter's responses to some prompts: (example indices, their responses, the model's device)
ResponseScorer = Callable[[list[int], list[str], torch.device], list[float]]


def response_racer(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    generation: GenerationSettings,
    slices: int,
    whole_batches: bool,
    score_range: tuple[float, float],
    score_responses: ResponseScorer,
    finish: Callable[[tuple[float, ...]], Score],
    pairs: bool = True,
) -> MeanRacer:
    """The racer of a utility that is a mean of per-response scores within `score_range`: a slice's
    greedy responses are generated under every adapter in one mixed-adapter pass, then each adapter's
    are scored at once by `score_responses` (a reward model, a judge: in batches of their own).
    `pairs`: graded scores (a reward, a rating), paired with the personal best's (see `MeanRacer`)."""
    plan = plan_slices(prompt_batches(tokenizer, prompts, generation), slices, whole_batches)

    def score_batches(model: CausalLM, tokenizer: Tokenizer, adapters: Adapters, batches: Batches) -> list[SliceScores]:
        texts = generate_for_adapters(model, tokenizer, prompts, generation, adapters, batches)
        rows = [i for batch in batches for i in batch]
        device = model_device(model)
        return [dict(zip(rows, score_responses(rows, [t[i] for i in rows], device))) for t in texts]

    return MeanRacer(len(prompts), plan, score_range, score_batches, finish, pairs)


def generation_racer(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    generation: GenerationSettings,
    slices: int,
    whole_batches: bool,
    right: Callable[[int, str], bool],
) -> MeanRacer:
    """The racer of a utility that is the share of greedy generations judged right one by one
    (`right(example index, generation)`): exact match, multiple choice read from the letter."""

    def score(rows: list[int], responses: list[str], device: torch.device) -> list[float]:
        return [float(right(i, response)) for i, response in zip(rows, responses)]

    return response_racer(tokenizer, prompts, generation, slices, whole_batches, (0.0, 1.0), score, share_right, pairs=False)


class GroupedRacer(Racer):
    """A share of examples answered right, each example judged from several units scored apart
    (multiple choice by log-likelihood: one unit per (prompt, choice) pair, in batches of pairs).

    Raced in units: `examples` counts units (the work scored, what racing saves), a slice is whole
    batches of the full scoring's units (exact), or with `whole_batches` false seeded random shares of
    the examples with all their units, batched by length within the slice (`confident`, whose
    interval takes the judged examples for a random sample). An example counts in the bounds once
    all its units are in; `judge(example, unit scores)` says whether it is right."""

    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        unit_batches: Batches,
        slices: int,
        whole_batches: bool,
        score_batches: Callable[[CausalLM, Tokenizer, Adapters, Batches], list[SliceScores]],
        judge: Callable[[int, list[float]], bool],
    ):
        self.groups = [tuple(g) for g in groups]
        self.examples = sum(len(g) for g in self.groups)
        self._score_batches, self._judge = score_batches, judge
        if whole_batches:
            self._plan = plan_slices(unit_batches, slices, True)
        else:
            self._plan = self._example_shares(unit_batches, slices)

    def _example_shares(self, unit_batches: Batches, slices: int) -> list[list[tuple[int, ...]]]:
        rank = {unit: position for position, unit in enumerate(i for batch in unit_batches for i in batch)}
        size = max(len(batch) for batch in unit_batches)
        count = max(1, min(slices, len(self.groups)))
        drawn = np.random.default_rng(RACING_SEED).permutation(len(self.groups)).tolist()
        plan = []
        for k in range(count):
            units = sorted((u for example in drawn[k::count] for u in self.groups[example]), key=rank.__getitem__)
            plan.append([tuple(units[start : start + size]) for start in range(0, len(units), size)])
        return plan

    @property
    def slices(self) -> int:
        return len(self._plan)

    def score_slice(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters, index: int) -> list[dict[str, SliceScores]]:
        return [{"": scores} for scores in self._score_batches(model, tokenizer, adapters, self._plan[index])]

    def _judged(self, units: dict[int, float]) -> dict[int, float]:
        """Right (1) or wrong (0), for the examples whose units are all scored."""
        return {
            example: float(self._judge(example, [units[u] for u in group]))
            for example, group in enumerate(self.groups)
            if all(u in units for u in group)
        }

    def bounds(self, partial: Partial, z: float | None = None, paired: FullScores | None = None) -> tuple[float, float]:
        """A share right: not paired (see `race_bounds`)."""
        return raced_bounds(self._judged(partial.scores.get("", {})), len(self.groups), (0.0, 1.0), z)

    def result(self, partial: Partial) -> Score:
        units = partial.scores.get("", {})
        if len(units) != self.examples:
            raise ValueError(f"{len(units)} of {self.examples} units scored: the particle has not run every slice")
        judged = self._judged(units)
        return share_right(tuple(judged[example] for example in range(len(self.groups))))


class TokenMeanRacer(MeanRacer):
    """A mean over tokens rather than examples (`nll`: the summed log-likelihood of every answer token
    over their count): example i adds its score (a sum of log-probabilities, at most 0) and its
    `tokens[i]`, known beforehand. No score has a floor, so only `racing: confident` races it: the high
    bound is exact (the unscored tokens add at most 0), the low one an estimate: the unscored examples'
    sum follows the scored ones' per-token mean (`ratio_interval`; paired: the personal best's sum there
    plus the scored differences' per-token mean), within `z` standard errors (a normal approximation,
    which a few very unlikely answers make less reliable than the share-right intervals). `plan`,
    `score_batches` and `finish` as for `MeanRacer`."""

    def __init__(
        self,
        tokens: Sequence[int],
        plan: list[list[tuple[int, ...]]],
        score_batches: Callable[[CausalLM, Tokenizer, Adapters, Batches], list[SliceScores]],
        finish: Callable[[tuple[float, ...]], Score],
    ):
        super().__init__(len(tokens), plan, (-math.inf, 0.0), score_batches, finish, pairs=True)
        self.tokens, self._total = list(tokens), sum(tokens)

    def bounds(self, partial: Partial, z: float | None = None, paired: FullScores | None = None) -> tuple[float, float]:
        scores = partial.scores.get("", {})
        known = math.fsum(scores.values())
        high = widened(known / self._total, math.inf)  # the unscored tokens at best add nothing
        if len(scores) == self.examples:
            return widened(known / self._total, -math.inf), high
        if z is None or len(scores) < 2:
            return -math.inf, high
        other = every_score(paired, self.examples)
        if other is None:  # the unscored examples' sum, from the scored ones' per-token mean
            rest, error = ratio_interval(scores, self.tokens, z)
        else:  # the personal best's sum there, plus the scored differences' per-token mean
            differences = {i: v - other[i] for i, v in scores.items()}
            rest, error = ratio_interval(differences, self.tokens, z)
            rest += math.fsum(v for i, v in enumerate(other) if i not in scores)
        centre = known + rest
        return within(((centre - error) / self._total, (centre + error) / self._total), (-math.inf, high))


class ComponentsRacer(Racer):
    """A utility aggregated from components that each race (`multitask`): slice k of the whole is slice
    k of every component; its bounds aggregate the components' bounds (every aggregate is monotone in
    each component, and so are its floating-point operations, each correctly rounded)."""

    def __init__(self, names: list[str], racers: list[Racer], combine: Callable[[list[Score]], Score], aggregate):
        self.names, self.racers, self._combine, self._aggregate = names, racers, combine, aggregate
        self.pairs = any(racer.pairs for racer in racers)
        self.examples = sum(racer.examples for racer in racers)

    @property
    def slices(self) -> int:
        return max(racer.slices for racer in self.racers)

    def score_slice(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters, index: int) -> list[dict[str, SliceScores]]:
        scored: list[dict[str, SliceScores]] = [{} for _ in adapters]
        for name, racer in zip(self.names, self.racers):
            if index < racer.slices:
                for per_adapter, scores in zip(scored, racer.score_slice(model, tokenizer, adapters, index)):
                    per_adapter[name] = scores[""]
        return scored

    def bounds(self, partial: Partial, z: float | None = None, paired: FullScores | None = None) -> tuple[float, float]:
        pairs = [
            racer.bounds(self._part(partial, name), z, None if paired is None else {"": paired.get(name, [])})
            for name, racer in zip(self.names, self.racers)
        ]
        return self._aggregate([low for low, _ in pairs]), self._aggregate([high for _, high in pairs])

    def result(self, partial: Partial) -> Score:
        return self._combine([racer.result(self._part(partial, name)) for name, racer in zip(self.names, self.racers)])

    @staticmethod
    def _part(partial: Partial, name: str) -> Partial:
        return Partial({"": partial.scores.get(name, {})}, partial.slices)


def every_score(paired: FullScores | None, examples: int) -> list[float] | None:
    """A single utility's scores of the point it is paired with, or None unless there are all `examples`."""
    scores = None if paired is None else paired.get("")
    return scores if scores is not None and len(scores) == examples else None
