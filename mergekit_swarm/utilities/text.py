"""Batched greedy generation and continuation log-likelihoods, shared by the utilities.

Both take `adapters`: names of adapter slots of a PeftModel, scored together in PEFT's
mixed-adapter batches (`adapter_names=`, one name per row), or `NO_ADAPTERS` for the
model as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from mergekit_swarm.core.protocols import CausalLM, Tokenizer, TorchModule
from mergekit_swarm.utilities.shared_prefix import PromptBatch, lay_out, shared_prefix_cache, shares_prefixes

T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def model_device(model: TorchModule) -> torch.device:
    return next(model.parameters()).device


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    batch_size: int
    chat_template: bool = False  # wrap each prompt as a user turn of the tokenizer's chat template


def as_chat(tokenizer: Tokenizer, prompt: str) -> str:
    """`prompt` as the user turn of the tokenizer's chat template, ready for the reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template: true, but the tokenizer has no chat template (set one with the recipe's chat_template:)")
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


Adapters = Sequence[str | None]
NO_ADAPTERS: Adapters = (None,)  # the model as it is (a plain model, or a PeftModel's active adapter)


def _rows_for(adapters: Adapters, rows: int) -> dict:
    """`adapter_names=` for a batch whose `rows` rows are repeated once per adapter (PEFT's
    mixed-adapter batches); nothing for the model as it is."""
    if tuple(adapters) == NO_ADAPTERS:
        return {}
    if any(a is None for a in adapters):
        raise ValueError("adapters: name every adapter, or pass NO_ADAPTERS for the model as it is")
    return {"adapter_names": [a for a in adapters for _ in range(rows)]}


def greedy_generate(model: CausalLM, tokenizer: Tokenizer, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches), special tokens removed."""
    return generate_for_adapters(model, tokenizer, prompts, settings, NO_ADAPTERS)[0]


def prompt_batches(tokenizer: Tokenizer, prompts: Sequence[str], settings: GenerationSettings) -> list[Sequence[int]]:
    """The batches `generate_for_adapters` generates `prompts` in: indices of prompts of similar
    lengths (little padding), from the shortest to the longest."""
    return list(batches(_by_length(tokenizer, tuple(prompts), settings.chat_template), settings.batch_size))


@torch.inference_mode()
def generate_for_adapters(
    model: CausalLM,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    settings: GenerationSettings,
    adapters: Adapters,
    batches_of: Sequence[Sequence[int]] | None = None,
) -> list[list[str]]:
    """Greedy continuations of `prompts` under each of `adapters` (adapter slots of a
    PeftModel): every batch of prompts is repeated once per adapter and generated as one
    mixed-adapter batch, so the base model's forward passes are shared. One list per adapter.

    `batches_of`: generate these batches of prompt indices alone, in place of `prompt_batches` (racing
    scores dev a slice at a time); the other prompts' texts stay ""."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_token_ids(model, tokenizer),
    )
    device = model_device(model)
    share = shares_prefixes(model)
    named = None if tuple(adapters) == NO_ADAPTERS else [a for a in adapters if a is not None]
    texts: list[list[str]] = [[""] * len(prompts) for _ in adapters]
    for chunk in prompt_batches(tokenizer, prompts, settings) if batches_of is None else batches_of:
        rows = _rows_for(adapters, len(chunk))  # (refuses unnamed adapters, so `named` names them all)
        batch = _encode_prompts(tokenizer, tuple(prompts[i] for i in chunk), settings.chat_template, share)
        width = batch.input_ids.shape[1]
        inputs = {
            "input_ids": batch.input_ids.repeat(len(adapters), 1).to(device),
            "attention_mask": batch.attention_mask.repeat(len(adapters), 1).to(device),
        }
        if batch.shared:  # the prompts' common beginning prefilled once per adapter (`shared_prefix`)
            inputs.update(shared_prefix_cache(model, batch, named, len(chunk)))
        output = model.generate(**inputs, generation_config=config, **rows)
        decoded = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        for a in range(len(adapters)):
            for row, i in enumerate(chunk):  # back in dataset order
                texts[a][i] = decoded[a * len(chunk) + row]
    return texts


def stop_token_ids(model: CausalLM, tokenizer: Tokenizer) -> list[int]:
    """The tokens that end a response: the model's own (its `generation_config`, e.g. `<|im_end|>`
    or `<|eot_id|>` of chat models, whose tokenizer's EOS may be the end-of-text token) and the
    tokenizer's EOS, as `pipeline` and `generate` with the model's defaults stop."""
    ids: list[int] = []
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        ids += [source] if isinstance(source, int) else list(source or [])
    return sorted(set(ids))


# A search evaluates the same prompts thousands of times: each batch is tokenized once. (The
# tokenizer is part of the key, by identity; entries are small integer tensors.)
@functools.lru_cache(maxsize=64)
def _by_length(tokenizer: Tokenizer, prompts: tuple[str, ...], chat_template: bool) -> tuple[int, ...]:
    """Indices of `prompts` from the shortest to the longest in tokens (stable)."""
    if chat_template:
        prompts = tuple(as_chat(tokenizer, p) for p in prompts)
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=not chat_template)["input_ids"]]
    return tuple(sorted(range(len(prompts)), key=lengths.__getitem__))


@functools.lru_cache(maxsize=1024)
def _encode_prompts(tokenizer: Tokenizer, prompts: tuple[str, ...], chat_template: bool, share: bool) -> PromptBatch:
    """One batch of prompts, left-padded (`share`: their common beginning first, see `shared_prefix`)."""
    if chat_template:  # the template already holds the special tokens it wants
        prompts = tuple(as_chat(tokenizer, p) for p in prompts)
    rows = tokenizer(list(prompts), add_special_tokens=not chat_template)["input_ids"]
    return lay_out(rows, _pad_token_id(tokenizer), share)


def _pad_token_id(tokenizer: Tokenizer) -> int:
    """The id batches are padded with (any: padded positions are masked out)."""
    if tokenizer.pad_token_id is None:  # (as torch.full would, with a message that says what is missing)
        raise TypeError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to its eos_token)")
    return tokenizer.pad_token_id


def continuation_logprobs(
    model: CausalLM, tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int
) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | prompt), number of tokens) for each pair.

    Prompt and continuation are tokenized separately and concatenated, so the
    continuation's tokens do not depend on how the prompt ends.
    """
    return logprobs_for_adapters(model, tokenizer, pairs, batch_size=batch_size, adapters=NO_ADAPTERS)[0]


def pair_batches(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int) -> list[Sequence[int]]:
    """The batches `logprobs_for_adapters` scores `pairs` in: indices of pairs of similar lengths
    (little padding), from the shortest to the longest."""
    return list(batches(_pairs_by_length(tokenizer, tuple(pairs)), batch_size))


@torch.inference_mode()
def logprobs_for_adapters(
    model: CausalLM,
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int,
    adapters: Adapters,
    batches_of: Sequence[Sequence[int]] | None = None,
) -> list[list[tuple[float, int]]]:
    """`continuation_logprobs` under each of `adapters`, in mixed-adapter batches (see
    `generate_for_adapters`). One list per adapter.

    `batches_of`: score these batches of pair indices alone, in place of `pair_batches` (racing
    scores dev a slice at a time); the other pairs stay (0.0, 0)."""
    device = model_device(model)
    results: list[list[tuple[float, int]]] = [[(0.0, 0)] * len(pairs) for _ in adapters]
    for chunk in pair_batches(tokenizer, pairs, batch_size) if batches_of is None else batches_of:
        ids, mask, spans = _encode_pairs(tokenizer, tuple(pairs[i] for i in chunk))
        rows, repeat = ids.shape[0], len(adapters)
        logits = model(
            input_ids=ids.repeat(repeat, 1).to(device),
            attention_mask=mask.repeat(repeat, 1).to(device),
            **_rows_for(adapters, rows),
        ).logits
        sums = []
        for a in range(repeat):
            for i, (start, end) in enumerate(spans):
                # logits at position t predict token t + 1
                logprobs = torch.log_softmax(logits[a * rows + i, start - 1 : end - 1].float(), dim=-1)
                sums.append(logprobs.gather(-1, ids[i, start:end].to(device)[:, None]).sum())
        values = torch.stack(sums).tolist()  # one transfer per batch, not one per row
        for a in range(repeat):
            for row, (i, (start, end)) in enumerate(zip(chunk, spans)):  # back in dataset order
                results[a][i] = (values[a * rows + row], end - start)
    return results


@functools.lru_cache(maxsize=64)
def _pairs_by_length(tokenizer: Tokenizer, pairs: tuple[tuple[str, str], ...]) -> tuple[int, ...]:
    """Indices of `pairs` from the shortest prompt + continuation to the longest, in tokens (stable)."""
    lengths = [len(tokenizer(p)["input_ids"]) + len(tokenizer(c, add_special_tokens=False)["input_ids"]) for p, c in pairs]
    return tuple(sorted(range(len(pairs)), key=lengths.__getitem__))


def continuation_ids(tokenizer: Tokenizer, continuation: str) -> list[int]:
    """The tokens of a continuation, as `logprobs_for_adapters` scores them: tokenized apart from its
    prompt, without special tokens."""
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]


@functools.lru_cache(maxsize=1024)
def _encode_pairs(tokenizer: Tokenizer, pairs: tuple[tuple[str, str], ...]) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Right-padded ids and mask of prompt + continuation rows, and each continuation's span."""
    rows, spans = [], []
    for prompt, continuation in pairs:
        head = tokenizer(prompt)["input_ids"]
        tail = continuation_ids(tokenizer, continuation)
        if not head or not tail:
            raise ValueError(f"prompt {prompt!r} or continuation {continuation!r} has no tokens")
        rows.append(head + tail)
        spans.append((len(head), len(head) + len(tail)))
    width = max(len(r) for r in rows)
    pad = _pad_token_id(tokenizer)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask, tuple(spans)
