"""`reward_model`: a local reward model scores the particle's greedy responses.

The reward model is an `AutoModelForSequenceClassification` with one label (the TRL
convention); its score for a response is `logits[:, 0]` of `prompt + response` (or of the
user/assistant chat, with `chat_template: true`). A tokenizer without a pad token gets
its EOS as pad, and the model's `pad_token_id` is set, so the last real token is read.

As in the paper, rewards can be normalised to [0, 1] (`normalize: {low, high}`, then
clipped). The `concise` / `verbose` variants (the paper's rm_concise / rm_verbose)
subtract / add `length_weight` x (response tokens / max_new_tokens) per response.
Utility = mean score; the mean raw reward and response length go to the history.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from mergekit_swarm.core.errors import UtilityError
from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.core.schema import RecipePath, StrictSection
from mergekit_swarm.utilities.base import AdapterBatchedUtility, GenerativeUtilityConfig, Score, Utility, register_utility
from mergekit_swarm.utilities.data import Example
from mergekit_swarm.utilities.racing import Racer, response_racer
from mergekit_swarm.utilities.text import Adapters, GenerationSettings, batches, generate_for_adapters, model_device


class RewardModel:
    """A sequence-classification reward model, loaded once and moved to the policy's device."""

    def __init__(self, path: Path, chat_template: bool = False, batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
        except Exception as exc:  # e.g. a checkpoint with 2 labels: one line, not a traceback
            raise UtilityError(f"cannot load a reward model (1 label) from {path}: {type(exc).__name__}: {exc}") from None
        if self.tokenizer.pad_token is None:  # TRL convention
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise UtilityError(f"chat_template: true, but the reward model's tokenizer ({path}) has no chat template")
        self.chat_template, self.batch_size = chat_template, batch_size

    def text(self, prompt: str, response: str) -> str:
        if not self.chat_template:
            return prompt + response
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(chat, tokenize=False)

    @torch.inference_mode()
    def __call__(self, prompts: list[str], responses: list[str], device: torch.device) -> list[float]:
        if model_device(self.model) != device:
            self.model.to(device)
        texts = [self.text(p, r) for p, r in zip(prompts, responses)]
        rewards: list[float] = []
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # an overlong text keeps its end: the response being scored
        limit = getattr(self.model.config, "max_position_embeddings", None)
        for chunk in batches(texts, self.batch_size):
            encoded = self.tokenizer(
                list(chunk),
                return_tensors="pt",
                padding=True,
                truncation=limit is not None,
                max_length=limit,
                add_special_tokens=not self.chat_template,
            )
            rewards += self.model(**encoded.to(device)).logits[:, 0].float().tolist()
        return rewards


@functools.lru_cache(maxsize=4)
def load_reward_model(path: Path, chat_template: bool, batch_size: int) -> RewardModel:
    """One reward model per run, shared by the dev and test utilities."""
    return RewardModel(path, chat_template, batch_size)


class RewardUtility(AdapterBatchedUtility):
    def __init__(
        self, examples: list[Example], generation: GenerationSettings, reward_model: RewardModel, config: RewardModelConfig
    ):
        self.prompts = [e.prompt for e in examples]
        self.generation, self.reward_model, self.config = generation, reward_model, config

    def score_adapters(self, model: CausalLM, tokenizer: Tokenizer, adapters: Adapters) -> list[Score]:
        per_adapter = generate_for_adapters(model, tokenizer, self.prompts, self.generation, adapters)
        # scored adapter by adapter: the reward model's batches, and so its rewards, do not depend on the batching
        return [self._score(responses, model_device(model), tokenizer) for responses in per_adapter]

    def _score(self, responses: list[str], device: torch.device, tokenizer: Tokenizer) -> Score:
        rewards, lengths, scores = self._scored(self.prompts, responses, device, tokenizer)
        details = {"reward": sum(rewards) / len(rewards), "response_tokens": sum(lengths) / len(lengths)}
        return Score(sum(scores) / len(scores), details, {"": tuple(scores)})

    def _scored(
        self, prompts: list[str], responses: list[str], device: torch.device, tokenizer: Tokenizer
    ) -> tuple[list[float], list[int], list[float]]:
        """Each response's raw reward, length in the policy's tokens, and score."""
        rewards = self.reward_model(prompts, responses, device)
        lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses]
        return rewards, lengths, [self.config.score(reward, length) for reward, length in zip(rewards, lengths)]

    @property
    def racing_note(self) -> str:
        if self.config.normalize is None:
            return "its rewards have no known range: with `normalize`, `racing: confident` races it"
        return (
            "the reward model scores a slice's responses in batches of their own, which may change the last bits of "
            "a reward: `racing: confident` races it"
        )

    def racer(self, tokenizer: Tokenizer, slices: int, whole_batches: bool = True) -> Racer | None:
        """`racing: confident` with `normalize` only: each response's score then lies in a known range.
        The history keeps the utility and each example's score (not the mean raw reward and length)."""
        if whole_batches or self.config.normalize is None:
            return None
        weight, penalty = self.config.length_weight, self.config.length_penalty
        score_range = (-weight if penalty == "concise" else 0.0, 1.0 + weight if penalty == "verbose" else 1.0)

        def score(rows: list[int], responses: list[str], device: torch.device) -> list[float]:
            return self._scored([self.prompts[i] for i in rows], responses, device, tokenizer)[2]

        def finish(scores: tuple[float, ...]) -> Score:
            return Score(sum(scores) / len(scores), per_example={"": scores})

        return response_racer(tokenizer, self.prompts, self.generation, slices, whole_batches, score_range, score, finish)


class RewardRange(StrictSection):
    section_name: ClassVar[str] = "normalize"
    low: float = Field(description="Reward mapped to 0.")
    high: float = Field(description="Reward mapped to 1.")

    @model_validator(mode="after")
    def _ordered(self) -> RewardRange:
        if self.high <= self.low:
            raise ValueError(f"normalize: high ({self.high}) must be larger than low ({self.low})")
        return self


@register_utility
class RewardModelConfig(GenerativeUtilityConfig):
    type: Literal["reward_model"] = "reward_model"
    model: RecipePath = Field(description="Folder of the reward model (sequence classification, 1 label).")
    max_new_tokens: int = Field(default=64, ge=1, description="Tokens generated per prompt (greedy).")
    normalize: RewardRange | None = Field(default=None, description="Map rewards [low, high] to [0, 1], clipped (as the paper).")
    length_penalty: Literal["none", "concise", "verbose"] = Field(
        default="none", description="The paper's rm_concise / rm_verbose."
    )
    length_weight: float = Field(default=0.5, ge=0, description="Weight of the length term for concise / verbose.")

    def may_be_negative(self) -> bool:
        return self.normalize is None or self.length_penalty == "concise"

    def score(self, reward: float, length: int) -> float:
        """One response's score: normalised reward, with the length term if any."""
        if self.normalize is not None:
            reward = min(1.0, max(0.0, (reward - self.normalize.low) / (self.normalize.high - self.normalize.low)))
        sign = {"none": 0.0, "concise": -1.0, "verbose": 1.0}[self.length_penalty]
        return reward + sign * self.length_weight * min(1.0, length / self.max_new_tokens)

    example_format: ClassVar[dict[str, bool]] = {"answers": False}

    def utility_on(self, examples: list[Example]) -> Utility:
        reward_model = load_reward_model(self.model, self.chat_template, self.batch_size)
        return RewardUtility(examples, self.generation(), reward_model, self)
