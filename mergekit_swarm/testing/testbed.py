"""The quality testbed: a tiny base, >= 8 single-skill experts (LoRA and full), objectives.

Deterministic from `--seed`, cached (a second call with the same arguments is instant):

* `base/`: a char-level Llama pre-trained on a mixture of every skill below (experts' skills
  and objectives' skills), so it knows each format a little;
* `lora/<skill>/`, `full/<skill>/`: one expert per skill in `--skills`, fine-tuned on that
  skill only, as a PEFT LoRA adapter and as a full fine-tune;
* `data/<objective>/{dev,test}.jsonl`: 200 dev and 2000 test examples (no test prompt is a dev prompt);
* `reward_model/`, `judge/`: a tiny reward model and a tiny judge, trained locally to like
  responses whose letters are in alphabetical order;
* `recipes/{lora,full}/<objective>.yml`: one swarm recipe per pool and objective.

Objectives (`--objectives`, each `name=skill[+skill...]`, an even exact-match mix of those
skills; a skill no expert was trained on, or a mix of several experts' skills, tests composition)
plus three fixed ones: `multitask` (harmonic mean of reverse and sort exact match), `reward`
(reward model) and `judge`.

    python benchmarks/testbed/build.py --seed 0
    python benchmarks/testbed/build.py --seed 1 --skills reverse,sort,shift,add,count,lookup,spell,balanced \\
        --objectives sort=sort,mix=reverse+add
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from mergekit_swarm.testing import toy

EXPERT_SKILLS = ("reverse", "sort", "shift", "add", "count", "lookup", "spell", "balanced")
OBJECTIVES = {  # name: skills (exact match on an even mix)
    "sort": ("sort",),  # an expert's own skill
    "add": ("add",),
    "double": ("double",),  # no expert; related to copying
    "reverse_shift": ("reverse_shift",),  # no expert; a composition of reverse and shift
    "mix_reverse_add": ("reverse", "add"),  # even mixes of trained skills: no one expert has them all
    "mix_sort_shift_count": ("sort", "shift", "count"),
}
MULTITASK = ("reverse", "sort")
PREFERENCE_SKILLS = ("sort", "reverse", "shift")  # prompts of the reward and judge objectives
JUDGE_TEMPLATE = "q {prompt} a {response}\n"
DEV, TEST = 200, 2000  # 2000 test examples: a cell's standard error ~0.01, not ~0.02
SWARM = {"particles": 10, "max_iterations": 8, "patience": 5}  # near the authors' later defaults (10 iterations)
VERSION = 3


def build(
    seed: int = 0,
    skills: tuple[str, ...] = EXPERT_SKILLS,
    objectives: dict[str, tuple[str, ...]] | None = None,
    *,
    root: Path,
    pools: tuple[str, ...] = ("lora", "full"),
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Build (or reuse) the testbed; returns its root folder."""
    objectives = dict(OBJECTIVES if objectives is None else objectives)
    unknown = [s for s in [*skills, *(s for v in objectives.values() for s in v)] if s not in toy.SKILLS]
    if unknown:
        raise SystemExit(f"unknown skill {unknown[0]!r}; choose from {', '.join(toy.SKILLS)}")
    build_id = {"version": VERSION, "seed": seed, "skills": skills, "objectives": objectives, "pools": pools}
    stamp = root / "build.json"
    if not force and toy.is_built(stamp, build_id):
        return root
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    say = (lambda *_: None) if quiet else (lambda *a: print(*a, flush=True))
    start = time.perf_counter()
    # The experts' skills weigh 4x in pre-training; the others (objectives no expert has) 1x: the
    # base knows their format, but not well, so that composing the experts can help.
    held_out = [s for s in dict.fromkeys([*(s for v in objectives.values() for s in v), "copy"]) if s not in skills]
    mixture = [*[s for s in dict.fromkeys([*skills, *MULTITASK]) for _ in range(4)], *held_out]
    say(f"pre-training the base on {len(set(mixture))} skills ...")
    base = toy.build_base(root / "base", skills=mixture, steps=600, seed=seed)
    for i, skill in enumerate(skills):
        if "lora" in pools:
            say(f"expert {skill!r}: LoRA ...")
            toy.build_lora_expert(base, root / "lora" / skill, skill, r=8, alpha=16, steps=150, seed=seed * 100 + i)
        if "full" in pools:
            say(f"expert {skill!r}: full fine-tune ...")
            toy.build_full_expert(base, root / "full" / skill, skill, steps=150, seed=seed * 100 + i)
    for j, (name, mix) in enumerate({**objectives, **{s: (s,) for s in MULTITASK}}.items()):
        _splits(root / "data" / name, mix, seed * 10_000 + 1000 * (j + 1))
    prompts = [r["prompt"] for r in toy.make_examples(PREFERENCE_SKILLS, 300, seed + 7)]
    say("training the reward model and the judge ...")
    toy.build_reward_model(root / "reward_model", prompts, steps=300, seed=seed)
    toy.build_judge(root / "judge", prompts, JUDGE_TEMPLATE, steps=400, seed=seed)
    toy.write_prompt_splits(root / "data" / "preference", PREFERENCE_SKILLS, seed=seed * 10_000 + 9000, dev=DEV, test=TEST)
    for pool in pools:
        for name, utility in _utilities(objectives).items():
            _write_recipe(root / "recipes" / pool / f"{name}.yml", pool, skills, utility, seed)
    toy.mark_built(stamp, build_id)
    say(f"testbed ready in {root} ({time.perf_counter() - start:.0f} s)")
    return root


def _splits(folder: Path, skills: tuple[str, ...], seed: int) -> None:
    """Dev and test drawn i.i.d. from the same mix; test prompts that are also dev prompts are left out."""
    dev = toy.make_examples(skills, DEV, seed)
    seen = {row["prompt"] for row in dev}
    drawn = toy.make_examples(skills, 3 * TEST, seed + 500)  # round-robin over the skills
    by_skill = [[row for row in drawn[k :: len(skills)] if row["prompt"] not in seen] for k in range(len(skills))]
    test = [by_skill[i % len(skills)][i // len(skills)] for i in range(TEST)]  # still an even mix
    toy.write_jsonl(folder / "dev.jsonl", dev)
    toy.write_jsonl(folder / "test.jsonl", test)


def _exact_match(name: str) -> dict:
    return {
        "type": "exact_match",
        "dev": f"../../data/{name}/dev.jsonl",
        "test": f"../../data/{name}/test.jsonl",
        "max_new_tokens": 12,
        "batch_size": 100,
    }


def _utilities(objectives: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    prompts = {"dev": "../../data/preference/dev.jsonl", "test": "../../data/preference/test.jsonl"}
    return {
        **{name: _exact_match(name) for name in objectives},
        "multitask": {
            "type": "multitask",
            "aggregate": "harmonic",
            "components": [{"name": s, "utility": _exact_match(s)} for s in MULTITASK],
        },
        "reward": {
            "type": "reward_model",
            "model": "../../reward_model",
            **prompts,
            "max_new_tokens": 8,
            "batch_size": 100,
            "normalize": {"low": 0.0, "high": 1.0},
        },
        "judge": {
            "type": "judge",
            **prompts,
            "max_new_tokens": 8,
            "batch_size": 100,
            "template": JUDGE_TEMPLATE,
            "backend": {"type": "local", "model": "../../judge", "max_new_tokens": 12, "batch_size": 100},
        },
    }


def _write_recipe(path: Path, pool: str, skills: tuple[str, ...], utility: dict, seed: int) -> None:
    recipe = {
        "merge_method": "model_swarms",
        "base_model": "../../base",  # LoRA: the adapters' base; full: the experts' ancestor (task vectors)
        "models": [{"model": f"../../{pool}/{s}"} for s in skills],
        "dtype": "float32",
        "swarm": {**SWARM, "seed": seed},
        "utility": utility,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


def parse_objectives(text: str) -> dict[str, tuple[str, ...]]:
    """`name=skill+skill,name2=skill` -> {name: (skills)}."""
    objectives = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, mix = item.partition("=")
        if not name or not mix:
            raise SystemExit(f"--objectives: {item!r} is not name=skill[+skill...]")
        objectives[name] = tuple(mix.split("+"))
    return objectives


def main(cache: Path) -> None:
    """The command line of `benchmarks/testbed/build.py` (builds under `cache/seed-N` by default)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skills", default=",".join(EXPERT_SKILLS), help="the experts' skills, comma-separated")
    parser.add_argument("--objectives", default=None, help="name=skill[+skill...],... (default: the standard four)")
    parser.add_argument("--pools", default="lora,full", help="lora, full or both")
    parser.add_argument("--root", type=Path, default=None, help=f"where to build (default: {cache}/seed-N)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a build is cached")
    args = parser.parse_args()
    objectives = parse_objectives(args.objectives) if args.objectives else None
    skills = tuple(s.strip() for s in args.skills.split(",") if s.strip())
    pools = tuple(p.strip() for p in args.pools.split(",") if p.strip())
    root = args.root or cache / f"seed-{args.seed}"
    print(f"ready: {build(args.seed, skills, objectives, root=root, pools=pools, force=args.force)}")
