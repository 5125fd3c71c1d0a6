"""Batched greedy generation and continuation log-likelihoods, shared by the utilities."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    batch_size: int
    chat_template: bool = False  # wrap each prompt as a user turn of the tokenizer's chat template


def as_chat(tokenizer, prompt: str) -> str:
    """`prompt` as the user turn of the tokenizer's chat template, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template: true, but the tokenizer has no chat template (set one with the recipe's chat_template:)")
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.inference_mode()
def greedy_generate(model, tokenizer, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches), special tokens removed."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if settings.chat_template:  # the template already holds the special tokens it wants
        prompts = [as_chat(tokenizer, p) for p in prompts]
    device = model_device(model)
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts: list[str] = []
    try:
        for chunk in batches(prompts, settings.batch_size):
            encoded = tokenizer(list(chunk), return_tensors="pt", padding=True, add_special_tokens=not settings.chat_template).to(
                device
            )
            output = model.generate(**encoded, generation_config=config)
            texts += tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = previous_side
    return texts


@torch.inference_mode()
def continuation_logprobs(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | prompt), number of tokens) for each pair.

    Prompt and continuation are tokenized separately and concatenated, so the
    continuation's tokens do not depend on how the prompt ends.
    """
    device = model_device(model)
    results: list[tuple[float, int]] = []
    for chunk in batches(pairs, batch_size):
        rows, spans = [], []
        for prompt, continuation in chunk:
            head = tokenizer(prompt)["input_ids"]
            tail = tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not head or not tail:
                raise ValueError(f"prompt {prompt!r} or continuation {continuation!r} has no tokens")
            rows.append(head + tail)
            spans.append((len(head), len(head) + len(tail)))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for i, (start, end) in enumerate(spans):
            # logits at position t predict token t + 1
            logprobs = torch.log_softmax(logits[i, start - 1 : end - 1].float(), dim=-1)
            targets = ids[i, start:end].to(device)
            results.append((float(logprobs.gather(-1, targets[:, None]).sum()), end - start))
    return results
