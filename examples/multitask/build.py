"""Build the multi-task example (offline, cached; re-uses the quickstart's models).

The objective is the paper's multi-task one: the harmonic mean of two exact-match
accuracies, `reverse` and `sort`, each on its own dev set, so a particle must be good at
both; each component's score is recorded in the history.

    python examples/multitask/build.py
    mergekit-swarm examples/multitask/swarm.yml multitask-out/
"""

from __future__ import annotations

import sys
from pathlib import Path

from mergekit_swarm.testing import quickstart, toy

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "quickstart"  # its models are built there and shared


def build(*, force: bool = False) -> Path:
    quickstart.build(QUICKSTART, force=force)
    for skill, seed in (("reverse", 4000), ("sort", 4100)):
        toy.write_jsonl(HERE / "data" / f"{skill}_dev.jsonl", toy.make_examples([skill], 100, seed=seed))
        toy.write_jsonl(HERE / "data" / f"{skill}_test.jsonl", toy.make_examples([skill], 250, seed=seed + 50))
    return HERE / "swarm.yml"


if __name__ == "__main__":
    print(f"ready: {build(force='--force' in sys.argv)}")
