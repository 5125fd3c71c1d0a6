"""The quickstart's tiny models and data (offline, ~1-2 minutes on 2 CPU cores, cached).

* `tiny/base`: a char-level Llama (~89k parameters) briefly pre-trained on a mixture of
  string skills (copy, reverse, sort, shift, count): it knows the format, and each skill
  a little;
* `tiny/experts/<skill>`: one LoRA adapter per skill (reverse, sort, shift, count), a
  short fine-tune that makes it good at its own skill and worse at the others. Ranks and
  alphas differ on purpose: the swarm pads and rescales them;
* `data/{dev,test}.jsonl`: the objective, an even mix of `reverse` and `sort` prompts
  (200 dev, 500 test, disjoint seeds). No expert is good at both; the swarm searches
  for a combination that is.

`examples/quickstart/build.py` builds them beside its `swarm.yml`; the other examples and the
benchmarks reuse them through `build(Path("examples/quickstart"))`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mergekit_swarm.testing import toy

EXPERTS = {  # skill: (rank, alpha)
    "reverse": (4, 8),
    "sort": (8, 8),
    "shift": (8, 16),
    "count": (16, 16),
}
OBJECTIVE = ("reverse", "sort")
BUILD_ID = {"version": 2, "experts": EXPERTS, "objective": OBJECTIVE}


def build(root: Path, *, force: bool = False, quiet: bool = False) -> Path:
    """Build (or reuse) everything under `root`; returns the path of swarm.yml."""
    stamp = root / "tiny" / "build.json"
    if not force and toy.is_built(stamp, BUILD_ID):
        return root / "swarm.yml"
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    say = (lambda *_: None) if quiet else print
    say("building the tiny base model ...")
    base = toy.build_base(root / "tiny" / "base", skills=("copy", *EXPERTS), steps=300, seed=0)
    for i, (skill, (rank, alpha)) in enumerate(EXPERTS.items()):
        say(f"training the {skill!r} expert (LoRA r={rank}, alpha={alpha}) ...")
        toy.build_lora_expert(base, root / "tiny" / "experts" / skill, skill, r=rank, alpha=alpha, steps=150, seed=i)
    toy.write_jsonl(root / "data" / "dev.jsonl", toy.make_examples(OBJECTIVE, 200, seed=1000))
    toy.write_jsonl(root / "data" / "test.jsonl", toy.make_examples(OBJECTIVE, 500, seed=2000))
    toy.mark_built(stamp, BUILD_ID)
    return root / "swarm.yml"
