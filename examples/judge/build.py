"""Build the LLM-as-judge example (offline, about a minute on 2 CPU cores, cached).

Re-uses the quickstart's base model and LoRA experts, and trains a tiny local "judge"
that answers "rating: 9" to responses whose letters are in alphabetical order and
"rating: 2" otherwise. The swarm searches for the combination the judge rates best.
(A real judge would be an instruction-tuned LLM, local or behind an OpenAI-compatible
endpoint: see the README.)

    python examples/judge/build.py
    mergekit-swarm examples/judge/swarm.yml judge-out/
"""

from __future__ import annotations

import sys
from pathlib import Path

from mergekit_swarm.testing import quickstart, toy

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "quickstart"  # its models are built there and shared

SKILLS = ("reverse", "sort", "shift")
TEMPLATE = "q {prompt} a {response}\n"  # must match `template:` in swarm.yml
BUILD_ID = {"version": 2, "skills": SKILLS, "template": TEMPLATE, "quickstart": quickstart.BUILD_ID}


def build(*, force: bool = False) -> Path:
    quickstart.build(QUICKSTART, force=force)
    stamp = HERE / "tiny" / "build.json"
    if not force and toy.is_built(stamp, BUILD_ID):
        return HERE / "swarm.yml"
    print("training the tiny judge (rates letters in alphabetical order 9, anything else 2) ...")
    prompts = [row["prompt"] for row in toy.make_examples(SKILLS, 300, seed=5000)]
    toy.build_judge(HERE / "tiny" / "judge", prompts, TEMPLATE, steps=400, seed=0)
    toy.write_prompt_splits(HERE / "data", SKILLS, seed=5000)
    toy.mark_built(stamp, BUILD_ID)
    return HERE / "swarm.yml"


if __name__ == "__main__":
    print(f"ready: {build(force='--force' in sys.argv)}")
