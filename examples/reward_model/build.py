"""Build the reward-model example (offline, about a minute on 2 CPU cores, cached).

Re-uses the quickstart's tiny base model and four LoRA experts, and trains a tiny reward
model (a 1-label sequence classifier, the TRL convention) that likes responses whose
letters are in alphabetical order. The prompts mix three skills (reverse, sort, shift):
only the `sort` expert tends to answer in order, and only for one prompt in three, so
the swarm has to find a combination whose answers the reward model likes more often.

    python examples/reward_model/build.py
    mergekit-swarm examples/reward_model/swarm.yml reward-out/
"""

from __future__ import annotations

import sys
from pathlib import Path

from mergekit_swarm.testing import quickstart, toy

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "quickstart"  # its models are built there and shared

SKILLS = ("reverse", "sort", "shift")
BUILD_ID = {"version": 1, "skills": SKILLS, "quickstart": quickstart.BUILD_ID}


def build(*, force: bool = False) -> Path:
    quickstart.build(QUICKSTART, force=force)
    stamp = HERE / "tiny" / "build.json"
    if not force and toy.is_built(stamp, BUILD_ID):
        return HERE / "swarm.yml"
    print("training the tiny reward model (likes letters in alphabetical order) ...")
    prompts = [row["prompt"] for row in toy.make_examples(SKILLS, 300, seed=3000)]
    toy.build_reward_model(HERE / "tiny" / "reward_model", prompts, steps=300, seed=0)
    toy.write_prompt_splits(HERE / "data", SKILLS, seed=3000)
    toy.mark_built(stamp, BUILD_ID)
    return HERE / "swarm.yml"


if __name__ == "__main__":
    print(f"ready: {build(force='--force' in sys.argv)}")
