"""`multiple_choice`: accuracy on examples with `choices`.

`parse: loglikelihood` (default) picks the choice with the highest summed log-probability
given the prompt (lm-eval's `acc`). `parse: generate` generates greedily and reads the
first standalone capital letter (A, B, ...) as the answer, like the paper; a generation
without a valid letter counts as wrong.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from mergekit_swarm.utilities.base import DatasetUtilityConfig, Split, Utility, register_utility
from mergekit_swarm.utilities.data import LETTERS, Example, load_examples
from mergekit_swarm.utilities.text import continuation_logprobs, greedy_generate

_LETTER = re.compile(r"\b([A-Z])\b")


def parse_letter(generation: str, choices: int) -> int | None:
    """Index of the first standalone letter among the first `choices` letters, else None."""
    for match in _LETTER.finditer(generation):
        index = LETTERS.index(match.group(1))
        if index < choices:
            return index
    return None


class MultipleChoice(Utility):
    def __init__(self, examples: list[Example], parse: str, max_new_tokens: int, batch_size: int):
        self.examples, self.parse = examples, parse
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def predictions(self, model, tokenizer) -> list[int | None]:
        if self.parse == "generate":
            texts = greedy_generate(
                model,
                tokenizer,
                [e.prompt for e in self.examples],
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
            )
            return [parse_letter(t, len(e.choices)) for t, e in zip(texts, self.examples)]
        pairs = [(e.prompt, choice) for e in self.examples for choice in e.choices]
        scores = iter(continuation_logprobs(model, tokenizer, pairs, batch_size=self.batch_size))
        predictions = []
        for e in self.examples:
            totals = [next(scores)[0] for _ in e.choices]
            predictions.append(max(range(len(totals)), key=totals.__getitem__))  # first on ties
        return predictions

    def __call__(self, model, tokenizer) -> float:
        predictions = self.predictions(model, tokenizer)
        return sum(p == e.answer_index for p, e in zip(predictions, self.examples)) / len(self.examples)


@register_utility
class MultipleChoiceConfig(DatasetUtilityConfig):
    type: Literal["multiple_choice"] = "multiple_choice"
    parse: Literal["loglikelihood", "generate"] = Field("loglikelihood", description="How the chosen answer is read.")
    max_new_tokens: int = Field(8, ge=1, description="Tokens generated per prompt with parse: generate.")

    def build(self, split: Split) -> Utility | None:
        path = self.path(split)
        if path is None:
            return None
        return MultipleChoice(load_examples(path, multiple_choice=True), self.parse, self.max_new_tokens, self.batch_size)
