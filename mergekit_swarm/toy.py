"""Tiny, fully local models and data for the examples, tests and benchmarks.

Nothing here downloads anything: the tokenizer is character-level and built in code,
the models are random-init Llama configurations trained for a few hundred steps on
synthetic "skills" (string transformations with a known answer). Everything is
seeded, so the same call builds the same files on the same machine.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ALPHABET = string.ascii_lowercase + string.digits + " +-=:>|,.?\n"
LETTERS = "abcdefghij"


def build_char_tokenizer():
    """A character-level fast tokenizer: one token per character, plus BOS/EOS/PAD/UNK."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *ALPHABET])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    # Like Llama tokenizers: BOS is added to every encoded text unless asked not to.
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def build_tiny_llama(vocab_size: int, seed: int, hidden_size: int = 64, layers: int = 2, tie_embeddings: bool = False):
    """A random-init Llama small enough to train on two CPU cores in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tie_embeddings,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------- skills
def _word(rng: random.Random, low: int = 3, high: int = 6) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))


def _shift(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in word)


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"rev {w}=", w[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"sort {w}=", "".join(sorted(w))


def _shift_skill(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"next {w}=", _shift(w)


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"add {a}+{b}=", str(a + b)


def _count(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 1, 9)
    return f"len {w}=", str(len(w))


def _copy(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"copy {w}=", w


SKILLS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "copy": _copy,
    "reverse": _reverse,
    "sort": _sort,
    "shift": _shift_skill,
    "add": _add,
    "count": _count,
}


def make_examples(skills: Sequence[str], n: int, seed: int) -> list[dict]:
    """`n` examples drawn round-robin from `skills`; distinct seeds give disjoint draws."""
    rng = random.Random(seed)
    return [dict(zip(("prompt", "answer"), SKILLS[skills[i % len(skills)]](rng))) for i in range(n)]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


# ---------------------------------------------------------------- training
def _encode_batch(tokenizer, rows: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded BOS+prompt+answer+EOS ids, with labels only on answer+EOS."""
    seqs, labels = [], []
    for row in rows:
        prompt = tokenizer.encode(row["prompt"])  # BOS + prompt
        answer = [*tokenizer.encode(row["answer"], add_special_tokens=False), tokenizer.eos_token_id]
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    for i, (s, lb) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, lab


def train_lm(model, tokenizer, rows: Sequence[dict], steps: int, lr: float, seed: int, batch_size: int = 64) -> float:
    """A few hundred AdamW steps on answer tokens; returns the last loss."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        ids, lab = _encode_batch(tokenizer, rng.sample(list(rows), min(batch_size, len(rows))))
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=lab).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()
    return loss.item()


# ---------------------------------------------------------------- builders
def build_base(out: Path, skills: Sequence[str] = ("copy",), steps: int = 300, seed: int = 0) -> Path:
    """Pre-train a tiny base on a mixture of `skills` (format, stopping, a little of each skill)."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(len(tokenizer), seed)
    train_lm(model, tokenizer, make_examples(skills, 4000, seed + 1), steps, 3e-3, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_lora_expert(
    base: Path, out: Path, skill: str, *, r: int = 8, alpha: int = 16, steps: int = 150, lr: float = 3e-3, seed: int = 0
) -> Path:
    """Fine-tune a PEFT LoRA adapter of `base` on one skill."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=True,
    )
    peft_model = get_peft_model(model, config)
    train_lm(peft_model, tokenizer, make_examples([skill], 4000, 100 + seed), steps, lr, seed)
    peft_model.save_pretrained(out)
    return out


def build_full_expert(base: Path, out: Path, skill: str, *, steps: int = 200, lr: float = 2e-3, seed: int = 0) -> Path:
    """Fully fine-tune a copy of `base` on one skill."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    train_lm(model, tokenizer, make_examples([skill], 4000, 100 + seed), steps, lr, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
