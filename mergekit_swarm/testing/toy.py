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


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, layers: int = 2, **overrides):
    """The Llama shape of every toy model: small enough to train on two CPU cores in seconds."""
    from transformers import LlamaConfig

    settings = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 64,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
    }
    return LlamaConfig(**{**settings, **overrides})


def build_tiny_llama(vocab_size: int, seed: int, hidden_size: int = 64, layers: int = 2, tie_embeddings: bool = False):
    """A random-init causal Llama of the toy shape."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(vocab_size, hidden_size, layers, tie_word_embeddings=tie_embeddings)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------- skills
def _word(rng: random.Random, low: int = 3, high: int = 6) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))


def shift(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in word)


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"rev {w}=", w[::-1]


def _sort(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"sort {w}=", "".join(sorted(w))


def _shift_skill(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"next {w}=", shift(w)


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"add {a}+{b}=", str(a + b)


def _count(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 1, 9)
    return f"len {w}=", str(len(w))


def _copy(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"copy {w}=", w


def _double(rng: random.Random) -> tuple[str, str]:
    w = _word(rng)
    return f"dbl {w}=", "".join(c + c for c in w)


def _lookup(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 4, 8)
    i = rng.randrange(len(w))
    return f"get {i} {w}=", w[i]


def _spell(rng: random.Random) -> tuple[str, str]:
    """Format conversion: digits written as the letters of the same rank (0 -> a)."""
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 6)))
    return f"spell {digits}=", "".join(LETTERS[int(d)] for d in digits)


def _balanced(rng: random.Random) -> tuple[str, str]:
    """Bracket matching, with + opening and - closing: half balanced, half with one bracket flipped."""
    pairs = rng.randint(2, 4)
    opens, depth, text = pairs, 0, []
    while opens or depth:
        if opens and (depth == 0 or rng.random() < 0.5):
            opens, depth = opens - 1, depth + 1
            text.append("+")
        else:
            depth -= 1
            text.append("-")
    balanced = rng.random() < 0.5
    if not balanced:  # one flip changes the sum by 2: never balanced
        i = rng.randrange(len(text))
        text[i] = "+" if text[i] == "-" else "-"
    return f"bal {''.join(text)}=", "yes" if balanced else "no"


def _reverse_shift(rng: random.Random) -> tuple[str, str]:
    """A composition of two skills: reverse, then shift every letter."""
    w = _word(rng)
    return f"rsh {w}=", shift(w[::-1])


SKILLS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "copy": _copy,
    "reverse": _reverse,
    "sort": _sort,
    "shift": _shift_skill,
    "add": _add,
    "count": _count,
    "double": _double,
    "lookup": _lookup,
    "spell": _spell,
    "balanced": _balanced,
    "reverse_shift": _reverse_shift,
}


def make_examples(skills: Sequence[str], n: int, seed: int) -> list[dict]:
    """`n` examples drawn round-robin from `skills`; distinct seeds give disjoint draws."""
    rng = random.Random(seed)
    return [dict(zip(("prompt", "answer"), SKILLS[skills[i % len(skills)]](rng))) for i in range(n)]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_prompt_splits(folder: Path, skills: Sequence[str], seed: int, dev: int = 60, test: int = 150) -> None:
    """`dev.jsonl` and `test.jsonl` of prompts only (reward model and judge objectives), disjoint seeds."""
    for name, n, offset in (("dev", dev, 100), ("test", test, 200)):
        write_jsonl(folder / f"{name}.jsonl", [{"prompt": r["prompt"]} for r in make_examples(skills, n, seed + offset)])


def is_built(stamp: Path, build_id: dict) -> bool:
    """Whether a cached build with exactly this description exists (see `mark_built`)."""
    return stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(build_id))


def mark_built(stamp: Path, build_id: dict) -> None:
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(build_id))


# ---------------------------------------------------------------- training
def _encode_batch(tokenizer, rows: Sequence[dict], end: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded BOS+prompt+answer+end ids (end: EOS unless given), their attention mask, and labels
    only on answer+end. The mask comes from the lengths, not from the pad id: a real chat model may pad
    with its end-of-turn token, which also ends every turn inside the prompt (SmolLM2's `<|im_end|>`)."""
    seqs, labels = [], []
    for row in rows:
        prompt = tokenizer.encode(row["prompt"])  # BOS + prompt (a chat-formatted prompt holds its own specials)
        answer = [*tokenizer.encode(row["answer"], add_special_tokens=False), tokenizer.eos_token_id if end is None else end]
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    lab = torch.full((len(seqs), width), -100)
    for i, (s, lb) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, mask, lab


def train_lm(
    model, tokenizer, rows: Sequence[dict], steps: int, lr: float, seed: int, batch_size: int = 64, end: int | None = None
) -> float:
    """A few hundred AdamW steps on answer tokens (each followed by `end`, default EOS); returns the last loss."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        ids, mask, lab = _encode_batch(tokenizer, rng.sample(list(rows), min(batch_size, len(rows))), end)
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
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
    peft_model.save_pretrained(str(out))
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


def is_sorted_word(text: str) -> bool:
    """The property the example reward model learns to like: letters in alphabetical order."""
    word = text.strip()
    return len(word) > 1 and list(word) == sorted(word)


def build_reward_model(out: Path, prompts: Sequence[str], *, steps: int = 300, seed: int = 0) -> Path:
    """Train a tiny 1-label classifier (TRL convention) on prompt+response, with reward 1
    for a response whose letters are sorted and 0 otherwise."""
    from transformers import LlamaForSequenceClassification

    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_llama_config(len(tokenizer), num_labels=1))
    rng = random.Random(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        texts, targets = [], []
        for _ in range(64):
            word = _word(rng)
            if rng.random() < 0.5:
                word = "".join(sorted(word))
            texts.append(rng.choice(prompts) + word)
            targets.append(float(is_sorted_word(word)))
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        loss = torch.nn.functional.mse_loss(model(**batch).logits[:, 0], torch.tensor(targets))
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_judge(out: Path, prompts: Sequence[str], template: str, *, steps: int = 400, seed: int = 0) -> Path:
    """Train a tiny causal LM to answer `template` (filled with a prompt and a response)
    with "rating: 9" when the response's letters are sorted and "rating: 2" otherwise
    (the character vocabulary has no capitals or "/")."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(len(tokenizer), seed)
    rng = random.Random(seed)
    rows = []
    for _ in range(4000):
        word = _word(rng)
        if rng.random() < 0.5:
            word = "".join(sorted(word))
        rating = 9 if is_sorted_word(word) else 2
        rows.append({"prompt": template.format(prompt=rng.choice(prompts), response=word), "answer": f"rating: {rating}"})
    train_lm(model, tokenizer, rows, steps, 3e-3, seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
