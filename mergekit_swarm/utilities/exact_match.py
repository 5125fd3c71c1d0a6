"""`exact_match`: greedy generation; correct when the gold answer appears in it (as the paper).

Both strings are normalised (lower case, runs of whitespace collapsed) before the
substring test. Utility = share of dev examples answered correctly.
"""

from __future__ import annotations

import re
from typing import Literal

from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.utilities.base import AdapterBatchedUtility, GenerativeUtilityConfig, Score, Utility, register_utility
from mergekit_swarm.utilities.data import Example
from mergekit_swarm.utilities.racing import Racer, generation_racer
from mergekit_swarm.utilities.score import share_right
from mergekit_swarm.utilities.text import Adapters, GenerationSettings, generate_for_adapters


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def contains_answer(generation: str, answer: str) -> bool:
    return normalize(answer) in normalize(generation)


class ExactMatch(AdapterBatchedUtility):
    def __init__(self, examples: list[Example], generation: GenerationSettings):
        self.examples, self.generation = examples, generation
        self.prompts = [e.prompt for e in examples]

    def score_adapters(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters) -> list[Score]:
        return [self.accuracy(g) for g in generate_for_adapters(model, tokenizer, self.prompts, self.generation, adapters)]

    def accuracy(self, generations: list[str]) -> Score:
        return share_right(tuple(float(contains_answer(g, e.answer)) for g, e in zip(generations, self.examples)))

    def racer(self, tokenizer: Tokenizer, slices: int, whole_batches: bool = True) -> Racer:
        def right(i: int, generation: str) -> bool:
            return contains_answer(generation, self.examples[i].answer)

        return generation_racer(tokenizer, self.prompts, self.generation, slices, whole_batches, right)


@register_utility
class ExactMatchConfig(GenerativeUtilityConfig):
    type: Literal["exact_match"] = "exact_match"

    def right_or_wrong(self) -> bool:
        return True

    def utility_on(self, examples: list[Example]) -> Utility:
        return ExactMatch(examples, self.generation())
