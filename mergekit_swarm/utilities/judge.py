"""`judge`: an LLM rates each of the particle's greedy responses from 1 to 10.

The judge sees `template` filled with the prompt and the response (default modelled on
the paper's: it asks for "Rating: x/10") and its first `Rating: x` (x/10, [[x]] and
**x** forms included) is read and clamped to [1, 10]. An answer without a rating scores 1
(the lowest) and is counted (`unparseable` in the history). Utility = mean rating / 10.
Backends: a local causal LM, or an OpenAI-compatible chat-completions endpoint.

    utility:
      type: judge
      dev: data/prompts_dev.jsonl       # {"prompt": ...}
      backend:
        type: openai
        base_url: http://127.0.0.1:8000/v1
        model: judge
        api_key_env: JUDGE_API_KEY      # the variable's name, never the key
"""

from __future__ import annotations

import re
import string
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field, field_validator

from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.utilities.base import AdapterBatchedUtility, GenerativeUtilityConfig, Score, Utility, register_utility
from mergekit_swarm.utilities.data import Example
from mergekit_swarm.utilities.judge_backends import LocalJudgeConfig, OpenAIJudgeConfig
from mergekit_swarm.utilities.racing import Racer, response_racer
from mergekit_swarm.utilities.text import Adapters, GenerationSettings, generate_for_adapters, model_device

DEFAULT_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
    "to the user question below. Consider its helpfulness, relevance, accuracy, depth and level of detail. "
    "Begin with a short explanation, then rate the response on a scale of 1 to 10 in exactly this format: "
    '"Rating: x/10".\n\n[Question]\n{prompt}\n\n[The Start of Assistant\'s Answer]\n{response}\n'
    "[The End of Assistant's Answer]"
)
_RATING = re.compile(r"rating[\s*_:=\[\]()]*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_rating(answer: str) -> float | None:
    """The first `Rating: x` in the judge's answer, clamped to [1, 10]; None if there is none."""
    match = _RATING.search(answer)
    if match is None:
        return None
    return min(10.0, max(1.0, float(match.group(1))))


class JudgeUtility(AdapterBatchedUtility):
    def __init__(self, examples: list[Example], generation: GenerationSettings, template: str, judge):
        self.prompts, self.generation, self.template, self.judge = [e.prompt for e in examples], generation, template, judge

    def score_adapters(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters) -> list[Score]:
        per_adapter = generate_for_adapters(model, tokenizer, self.prompts, self.generation, adapters)
        # judged adapter by adapter: the judge's batches, and so its answers, do not depend on the batching
        return [self._score(responses, model_device(model)) for responses in per_adapter]

    def _score(self, responses: list[str], device: torch.device) -> Score:
        ratings = self._ratings(self.prompts, responses, device)
        unparseable = sum(r is None for r in ratings)
        values = [1.0 if r is None else r for r in ratings]
        mean = sum(values) / len(values)
        details = {"mean_rating": mean, "unparseable": float(unparseable)}
        return Score(mean / 10, details, {"": tuple(v / 10 for v in values)})

    def _ratings(self, prompts: list[str], responses: list[str], device: torch.device) -> list[float | None]:
        # format() reads braces in the template only, never in the prompts or responses it inserts
        questions = [self.template.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
        return [parse_rating(answer) for answer in self.judge(questions, device)]

    racing_note = (
        "the judge answers a slice's questions in batches of their own, and its answers may depend on their company: "
        "`racing: confident` races it"
    )

    def racer(self, tokenizer: Tokenizer, slices: int, whole_batches: bool = True) -> Racer | None:
        """`racing: confident` only: each rating / 10 lies in [0.1, 1]. The history keeps the utility, the
        mean rating and each example's score (not the count of unparseable answers)."""
        if whole_batches:
            return None

        def score(rows: list[int], responses: list[str], device: torch.device) -> list[float]:
            ratings = self._ratings([self.prompts[i] for i in rows], responses, device)
            return [(1.0 if r is None else r) / 10 for r in ratings]

        def finish(scores: tuple[float, ...]) -> Score:
            mean = sum(10 * s for s in scores) / len(scores)
            return Score(mean / 10, {"mean_rating": mean}, {"": scores})

        return response_racer(tokenizer, self.prompts, self.generation, slices, whole_batches, (0.1, 1.0), score, finish)


@register_utility
class JudgeConfig(GenerativeUtilityConfig):
    type: Literal["judge"] = "judge"
    max_new_tokens: int = Field(default=64, ge=1, description="Tokens the particle generates per prompt (greedy).")
    template: str = Field(default=DEFAULT_TEMPLATE, description="The judge's prompt, with {prompt} and {response}.")
    backend: Annotated[LocalJudgeConfig | OpenAIJudgeConfig, Field(discriminator="type")] = Field(
        description="type: local (a causal LM folder) or openai (a chat-completions endpoint)."
    )

    @field_validator("template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"the judge template has a stray brace ({exc}); write literal braces as {{{{ }}}}") from None
        if fields != {"prompt", "response"}:
            raise ValueError(
                f"the judge template needs exactly the {{prompt}} and {{response}} placeholders, got {sorted(fields)}"
            )
        return value

    example_format: ClassVar[dict[str, bool]] = {"answers": False}

    def utility_on(self, examples: list[Example]) -> Utility:
        return JudgeUtility(examples, self.generation(), self.template, _connect(self.backend))


_BACKENDS: dict = {}


def _connect(config: LocalJudgeConfig | OpenAIJudgeConfig):
    """One backend per configuration and run (a local judge model is loaded once for dev and test)."""
    key = config.model_dump_json()
    if key not in _BACKENDS:
        _BACKENDS[key] = config.connect()
    return _BACKENDS[key]
