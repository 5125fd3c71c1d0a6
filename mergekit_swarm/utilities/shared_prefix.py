"""Prompts that begin alike are prefilled from their shared beginning once, not once per row.

Every prompt of a chat-template utility starts with the same system turn (SmolLM2-135M-Instruct:
24 of its ~42 prompt tokens; Llama 3 and Qwen 2.5 templates have one too), and a judge's
prompts with the same instructions. Prefill is most of the cost of short replies (on 2 CPU
cores, 70% of generating 8 tokens for 100 chat prompts), so a batch is laid out as

    [shared tokens | left padding | the rest of each prompt]

and the shared tokens' keys and values are computed once per adapter, then repeated for every
row: generation starts from that cache. Positions come from the attention mask, as with plain
left padding, so every row sees the same positions and tokens as before; only the float
rounding of a different matrix shape can differ (measured: the same 100 of 100 replies on
SmolLM2, 1.6x faster). Used only where the model's cache is the plain dynamic one over full
attention (no sliding windows, recurrent states or encoder-decoders): elsewhere, the batch is
left-padded as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergekit_swarm.core.protocols import CausalLM

MIN_SHARED_TOKENS = 8  # below this the extra forward pass saves too little to be worth it


@dataclass(frozen=True)
class PromptBatch:
    """Input ids and attention mask of one batch of prompts: `shared` leading tokens every row has
    (0: plain left padding), then left padding, then the rest of each prompt."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    shared: int


def lay_out(rows: Sequence[Sequence[int]], pad_token_id: int, share: bool) -> PromptBatch:
    """The batch of token `rows` (see `PromptBatch`); `share`: put their common beginning first."""
    shared = _common_length(rows) if share and len(rows) > 1 else 0  # (one row alone: nothing to share)
    # never a whole prompt: its last token's logits give the first new token
    shared = min(shared, min(len(row) for row in rows) - 1)
    shared = shared if shared >= MIN_SHARED_TOKENS else 0
    width = shared + max(len(row) - shared for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :shared], mask[i, :shared] = torch.tensor(row[:shared], dtype=torch.long), 1
        rest = row[shared:]
        ids[i, width - len(rest) :], mask[i, width - len(rest) :] = torch.tensor(rest, dtype=torch.long), 1
    return PromptBatch(ids, mask, shared)


def _common_length(rows: Sequence[Sequence[int]]) -> int:
    first, length = rows[0], min(len(row) for row in rows)
    for position in range(length):
        if any(row[position] != first[position] for row in rows):
            return position
    return length


def shared_prefix_cache(model: CausalLM, batch: PromptBatch, adapters: Sequence[str] | None, rows: int) -> dict:
    """`generate`'s cache argument: the keys and values of `batch`'s shared tokens under each adapter (PEFT's
    `adapter_names`; None: the model as it is), repeated for the `rows` rows of each adapter (adapter-major,
    as the batch is)."""
    from transformers import DynamicCache

    decoder = _decoder(model)
    keyword = _cache_keyword(decoder)
    assert keyword is not None, "shares_prefixes(model) said no"
    copies = 1 if adapters is None else len(adapters)
    prefix = batch.input_ids[:1, : batch.shared].repeat(copies, 1).to(next(model.parameters()).device)
    try:
        cache = DynamicCache(config=decoder.config)  # transformers >= 4.56: the layers the config says
    except TypeError:
        cache = DynamicCache()
    named = {} if adapters is None else {"adapter_names": list(adapters)}
    model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, **{keyword: cache}, **named)
    cache.batch_repeat_interleave(rows)
    return {keyword: cache}


def shares_prefixes(model: CausalLM) -> bool:
    """Whether generation can start from a shared-prefix cache: a decoder whose default cache is the
    dynamic one, over full attention only (a sliding window would count the padding between the shared
    tokens and the rest), taking a cache, with no cache implementation of its own."""
    decoder = _decoder(model)
    config = decoder.config.get_text_config()
    layer_types = getattr(config, "layer_types", None)
    supports_dynamic = getattr(decoder, "_supports_default_dynamic_cache", None)
    return (
        not getattr(config, "is_encoder_decoder", False)
        and callable(supports_dynamic)
        and bool(supports_dynamic())
        and _cache_keyword(decoder) is not None
        and (set(layer_types) == {"full_attention"} if layer_types else not getattr(config, "sliding_window", None))
        and getattr(getattr(decoder, "generation_config", None), "cache_implementation", None) is None
    )


def _cache_keyword(decoder) -> str | None:
    """The name the model's forward takes its cache by: `cache` (transformers 5.2x), `past_key_values` before."""
    parameters = inspect.signature(decoder.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _decoder(model: CausalLM) -> Any:
    """The transformers model (a `PreTrainedModel`, whose config and class methods are read here), under a PeftModel."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
