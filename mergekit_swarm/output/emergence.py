"""Correctness emergence (the paper's "previously unseen capabilities"): which examples the winner
gets right that no expert got right, and which it loses that some expert had right.

Read from the per-example scores of utilities that are a mean over examples (`Score.per_example`);
it says something only where each example is right or wrong (exact match, multiple choice, or a
multitask objective of such components), and is None otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from mergekit_swarm.core.names import EXAMPLES_FILE

PerExample = Mapping[str, Sequence[float]]  # component ("" for one utility) -> each example's score


def emergence(experts: Sequence[PerExample], winner: PerExample) -> dict[str, int] | None:
    """Counts over the split's examples: `examples`, `experts_solve` (solved by at least one expert),
    `winner_solves`, `new` (the winner only), `lost` (some expert, not the winner); None when the
    scores are not right/wrong or were not recorded."""
    if not winner or any(not e or e.keys() != winner.keys() for e in experts):
        return None
    keys = sorted(winner)
    won = [v for k in keys for v in winner[k]]
    solved_by_experts = [any(v) for v in zip(*[[v for k in keys for v in e[k]] for e in experts])]
    if any(v not in (0.0, 1.0) for v in won) or len(solved_by_experts) != len(won):
        return None
    return {
        "examples": len(won),
        "experts_solve": sum(solved_by_experts),
        "winner_solves": int(sum(won)),
        "new": sum(1 for w, s in zip(won, solved_by_experts) if w and not s),
        "lost": sum(1 for w, s in zip(won, solved_by_experts) if s and not w),
    }


def sentence(counts: Mapping[str, Mapping[str, int] | None]) -> str:
    """One sentence for the card and the summary, e.g. "On test, the winner solves 12 of 2000
    examples that no expert solves, and misses 5 that some expert solves"."""
    parts = []
    for split, c in counts.items():
        if c:
            parts.append(
                f"on {split}, the winner solves {c['new']} of {c['examples']} examples that no expert solves, "
                f"and misses {c['lost']} that some expert solves"
            )
    return ("; ".join(parts) + ".").capitalize() if parts else ""


def write_examples(folder: Path, experts: Sequence[str], examples: Mapping[str, Mapping]) -> None:
    """`swarm_examples.json`: per split, each expert's and the winner's score on every example."""
    data = {
        split: {"experts": dict(zip(experts, [dict(e) for e in found["experts"]])), "winner": dict(found["winner"])}
        for split, found in examples.items()
    }
    (folder / EXAMPLES_FILE).write_text(json.dumps(data) + "\n", encoding="utf-8")
