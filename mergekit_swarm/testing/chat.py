"""A tiny chat model with a real tokenizer: byte-level BPE trained locally, special tokens, ChatML.

Like Qwen2-Instruct in miniature: the tokenizer's EOS is `<|endoftext|>`, padding has its own
token, no BOS is added, and replies end with `<|im_end|>`, which only the model's
`generation_config` lists as a stop token (so code that stops on the tokenizer's EOS alone runs
past the end of the reply). Models are Qwen2 configurations trained for a few dozen steps on two small
skills (`make_examples`), every prompt wrapped in the chat template.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from mergekit_swarm.testing import toy

END_OF_TEXT, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


SKILLS = ("first", "last")  # the first / last letter of a word: learnable in a few dozen steps with BPE tokens


def make_examples(skills: Sequence[str], n: int, seed: int) -> list[dict]:
    """`n` questions like "first of gabji?" -> "g", round-robin over `skills`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        word = "".join(rng.choice(toy.LETTERS) for _ in range(rng.randint(3, 7)))
        skill = skills[i % len(skills)]
        rows.append({"prompt": f"{skill} of {word}?", "answer": word[0] if skill == "first" else word[-1]})
    return rows


def build_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 384):
    """A byte-level BPE fast tokenizer (GPT-2/Qwen style) trained on `texts`, with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=END_OF_TEXT, pad_token=PAD)
    tokenizer.chat_template = CHATML
    return tokenizer


def chat_rows(tokenizer, rows: Sequence[dict]) -> list[dict]:
    """Examples whose prompt is the chat-formatted user turn (the reply is the answer)."""
    from mergekit_swarm.utilities.text import as_chat

    return [{"prompt": as_chat(tokenizer, row["prompt"]), "answer": row["answer"]} for row in rows]


def tiny_qwen2(vocab_size: int, seed: int, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def build_chat_model(folder: Path, tokenizer, rows: Sequence[dict], *, steps: int, seed: int = 0) -> Path:
    """Train a tiny Qwen2 to answer chat-formatted `rows` and end its replies with `<|im_end|>`;
    its generation_config stops on `<|im_end|>` and `<|endoftext|>`, as Qwen2-Instruct's does."""
    model = tiny_qwen2(len(tokenizer), seed, tokenizer)
    end = tokenizer.convert_tokens_to_ids(IM_END)
    toy.train_lm(model, tokenizer, chat_rows(tokenizer, rows), steps, 3e-3, seed, end=end)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_chat_lora(base: Path, folder: Path, rows: Sequence[dict], *, rank: int, steps: int, seed: int = 0) -> Path:
    """A LoRA adapter of the chat model `base`, trained on chat-formatted `rows`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    peft_model = get_peft_model(model, config)
    end = tokenizer.convert_tokens_to_ids(IM_END)
    toy.train_lm(peft_model, tokenizer, chat_rows(tokenizer, rows), steps, 3e-3, seed, end=end)
    peft_model.save_pretrained(str(folder))
    return folder
