"""`multiple_choice`: accuracy on examples with `choices`.

`parse: loglikelihood` (default) picks the choice with the highest summed log-probability
given the prompt (lm-eval's `acc`); the choice is appended to the prompt after
`target_delimiter` (default "": as written; lm-eval uses " ").
`parse: generate` generates greedily and reads the answer letter, like the paper; the
prompt must then list the choices as lettered options itself ("A. ...", "B. ...").
A generation without a valid letter counts as wrong.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field

from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.utilities.base import AdapterBatchedUtility, GenerativeUtilityConfig, Score, Utility, register_utility
from mergekit_swarm.utilities.data import LETTERS, Example
from mergekit_swarm.utilities.racing import Batches, GroupedRacer, Racer, SliceScores, generation_racer
from mergekit_swarm.utilities.score import share_right
from mergekit_swarm.utilities.text import (
    Adapters,
    GenerationSettings,
    generate_for_adapters,
    logprobs_for_adapters,
    pair_batches,
)

# Most explicit first: "answer is (B)" / "Answer: B", then a leading "B." / "(B)", then "(B)"
# anywhere, then any standalone capital letter (which an article "A" can fool).
_LETTER_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*\(?([A-Z])\b", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-Z])(?:[).:]|\s*$)"),
    re.compile(r"\(([A-Z])\)"),
    re.compile(r"\b([A-Z])\b"),
]


def parse_letter(generation: str, choices: int) -> int | None:
    """Index of the answer letter among the first `choices` letters, else None."""
    for pattern in _LETTER_PATTERNS:
        for match in pattern.finditer(generation):
            letter = match.group(1)
            if letter in LETTERS[:choices]:  # the first pattern matches case-insensitively on "answer" only
                return LETTERS.index(letter)
    return None


class MultipleChoice(AdapterBatchedUtility):
    def __init__(self, examples: list[Example], parse: str, generation: GenerationSettings, target_delimiter: str = ""):
        self.examples, self.parse, self.generation, self.delimiter = examples, parse, generation, target_delimiter

    def predictions(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters) -> list[list[int | None]]:
        """The chosen answer index of every example, for each adapter."""
        if self.parse == "generate":
            prompts = [e.prompt for e in self.examples]
            return [
                [parse_letter(t, len(e.choices)) for t, e in zip(texts, self.examples)]
                for texts in generate_for_adapters(model, tokenizer, prompts, self.generation, adapters)
            ]
        size = self.generation.batch_size
        per_adapter = logprobs_for_adapters(model, tokenizer, self._pairs(), batch_size=size, adapters=adapters)
        return [self._argmax(scores) for scores in per_adapter]

    def _argmax(self, scores: list[tuple[float, int]]) -> list[int | None]:
        remaining = iter(scores)
        predictions: list[int | None] = []
        for e in self.examples:
            totals = [next(remaining)[0] for _ in e.choices]
            predictions.append(max(range(len(totals)), key=totals.__getitem__))  # first on ties
        return predictions

    def score_adapters(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters) -> list[Score]:
        scores = []
        for predictions in self.predictions(model, tokenizer, adapters):
            scores.append(share_right(tuple(float(p == e.answer_index) for p, e in zip(predictions, self.examples))))
        return scores

    @staticmethod
    def _letter_right(generation: str, example: Example) -> bool:
        return parse_letter(generation, len(example.choices)) == example.answer_index

    def racer(self, tokenizer: Tokenizer, slices: int, whole_batches: bool = True) -> Racer | None:
        """With `parse: generate`: slices of the generation batches. By log-likelihood: slices of the
        batches of (prompt, choice) pairs, an example judged once all its choices are scored
        (`GroupedRacer`: racing then counts pairs, the work scored)."""
        if self.parse == "generate":

            def letter_right(i: int, generation: str) -> bool:
                return _letter_right(generation, self.examples[i])

            prompts = [e.prompt for e in self.examples]
            return generation_racer(tokenizer, prompts, self.generation, slices, whole_batches, letter_right)
        pairs = self._pairs()
        groups, start = [], 0
        for e in self.examples:
            groups.append(range(start, start + len(e.choices)))
            start += len(e.choices)
        size = self.generation.batch_size

        def score_batches(model: CausalLM, tokenizer: Tokenizer, adapters: Adapters, batches: Batches) -> list[SliceScores]:
            per_adapter = logprobs_for_adapters(model, tokenizer, pairs, batch_size=size, adapters=adapters, batches_of=batches)
            units = [i for batch in batches for i in batch]
            return [{i: scores[i][0] for i in units} for scores in per_adapter]

        def most_likely_right(example: int, totals: list[float]) -> bool:
            return max(range(len(totals)), key=totals.__getitem__) == self.examples[example].answer_index  # first on ties

        plan = pair_batches(tokenizer, pairs, size)
        return GroupedRacer(groups, plan, slices, whole_batches, score_batches, most_likely_right)

    def _pairs(self) -> list[tuple[str, str]]:
        """(prompt, delimiter + choice) for every choice of every example, in order."""
        return [(e.prompt, self.delimiter + choice) for e in self.examples for choice in e.choices]


def _letter_right(generation: str, example: Example) -> bool:
    return parse_letter(generation, len(example.choices)) == example.answer_index


@register_utility
class MultipleChoiceConfig(GenerativeUtilityConfig):
    type: Literal["multiple_choice"] = "multiple_choice"
    parse: Literal["loglikelihood", "generate"] = Field(default="loglikelihood", description="How the chosen answer is read.")
    max_new_tokens: int = Field(default=8, ge=1, description="Tokens generated per prompt with parse: generate.")
    target_delimiter: str = Field(
        default="", description='Put between prompt and choice with parse: loglikelihood (lm-eval: " ").'
    )

    example_format: ClassVar[dict[str, bool]] = {"multiple_choice": True}

    def right_or_wrong(self) -> bool:
        return True

    def utility_on(self, examples: list[Example]) -> Utility:
        return MultipleChoice(examples, self.parse, self.generation(), self.target_delimiter)
