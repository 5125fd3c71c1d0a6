"""`multitask`: several utilities, weighted, aggregated into one objective.

`aggregate: harmonic` is the paper's multi-task objective (a weighted harmonic mean, so a
particle must be good at every task); `mean` and `min` are the usual alternatives. Each
component's score is kept in the history (`details`), under the component's name.

    utility:
      type: multitask
      aggregate: harmonic
      components:
        - name: reverse
          weight: 1.0
          utility: {type: exact_match, dev: data/reverse_dev.jsonl, test: data/reverse_test.jsonl}
        - name: sort
          utility: {type: exact_match, dev: data/sort_dev.jsonl, test: data/sort_test.jsonl}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.core.schema import StrictSection
from mergekit_swarm.utilities.base import Score, Split, Utility, UtilityConfig, register_utility, validate_utility
from mergekit_swarm.utilities.racing import ComponentsRacer, Racer


def aggregate(values: list[float], weights: list[float], how: str) -> float:
    """Weighted mean, weighted harmonic mean (0 if any value is 0) or minimum."""
    if how == "min":
        return min(values)
    if how == "mean":
        return sum(w * v for w, v in zip(weights, values)) / sum(weights)
    if any(v < 0 for v in values):
        raise ValueError(f"the harmonic mean needs scores >= 0, got {min(values)}; use aggregate: mean or min")
    if any(v == 0 for v in values):
        return 0.0
    return sum(weights) / sum(w / v for w, v in zip(weights, values))


class Component(StrictSection):
    """One utility of a multi-task objective."""

    section_name: ClassVar[str] = "multitask component"
    name: str | None = Field(default=None, description="Name in the history and card (default: its position and type).")
    weight: float = Field(default=1.0, gt=0, description="Relative weight in the mean / harmonic mean.")
    utility: Any = Field(description="A utility section, e.g. {type: exact_match, dev: ...}.")

    @field_validator("utility", mode="before")
    @classmethod
    def _validate_utility(cls, value: Any, info: ValidationInfo) -> UtilityConfig:
        if isinstance(value, UtilityConfig):
            return value
        if isinstance(value, dict) and value.get("type") == "multitask":
            raise ValueError("multitask components cannot themselves be multitask")
        return validate_utility(value, info.context)


class MultiTask(Utility):
    def __init__(self, names: list[str], weights: list[float], utilities: list[Utility], how: str):
        self.names, self.weights, self.utilities, self.how = names, weights, utilities, how

    def __call__(self, model: CausalLM, tokenizer: Tokenizer) -> Score:
        return self._combine([utility(model, tokenizer) for utility in self.utilities])

    @property
    def scores_adapter_batches(self) -> bool:
        return all(u.scores_adapter_batches for u in self.utilities)

    def score_adapters(self, model: CausalLM, tokenizer: Tokenizer, adapters: Sequence[str]) -> list[Score]:
        per_component = [utility.score_adapters(model, tokenizer, adapters) for utility in self.utilities]
        return [self._combine([scores[i] for scores in per_component]) for i in range(len(adapters))]

    racing_note = "it races only where every component races"

    def racer(self, tokenizer: Tokenizer, slices: int, whole_batches: bool = True) -> Racer | None:
        """Slice k is slice k of every component; only when every component races."""
        racers = [utility.racer(tokenizer, slices, whole_batches) for utility in self.utilities]
        if any(racer is None for racer in racers):
            return None

        def bound(values: list[float]) -> float:
            return aggregate(values, self.weights, self.how)

        return ComponentsRacer(self.names, [r for r in racers if r is not None], self._combine, bound)

    def _combine(self, results: Sequence[float | Score]) -> Score:
        details: dict[str, float] = {}
        per_example: dict[str, tuple[float, ...]] = {}
        values = []
        for name, result in zip(self.names, results):
            score = result if isinstance(result, Score) else Score(float(result))
            values.append(float(score.value))
            details[name] = values[-1]
            details.update({f"{name}/{key}": value for key, value in score.details.items()})
            per_example.update({"/".join(filter(None, (name, key))): v for key, v in score.per_example.items()})
        return Score(aggregate(values, self.weights, self.how), details, per_example)


@register_utility
class MultitaskConfig(UtilityConfig):
    type: Literal["multitask"] = "multitask"
    aggregate: Literal["mean", "harmonic", "min"] = Field(default="harmonic", description="How the component scores combine.")
    components: list[Component] = Field(min_length=2, description="The utilities combined.")

    @model_validator(mode="after")
    def _consistent(self) -> MultitaskConfig:
        names = self.names()
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique, got {names}")
        if self.aggregate == "harmonic":
            negative = [name for name, c in zip(names, self.components) if c.utility.may_be_negative()]
            if negative:
                raise ValueError(
                    f"component {negative[0]!r} can score below 0, which a harmonic mean cannot take; "
                    "use aggregate: mean or min (or normalize a reward model without the concise penalty)"
                )
        return self

    def names(self) -> list[str]:
        return [c.name or f"{i}:{c.utility.type}" for i, c in enumerate(self.components)]

    def build(self, split: Split, holdout: float = 0.0) -> Utility | None:
        utilities = [c.utility.build(split, holdout) for c in self.components]
        if any(u is None for u in utilities):  # a test score needs every component's test data
            return None
        return MultiTask(self.names(), [c.weight for c in self.components], utilities, self.aggregate)

    def right_or_wrong(self) -> bool:
        return all(c.utility.right_or_wrong() for c in self.components)

    def can_hold_out(self) -> bool:
        return all(c.utility.can_hold_out() for c in self.components)

    def may_be_negative(self) -> bool:
        return self.aggregate != "harmonic" and any(c.utility.may_be_negative() for c in self.components)
