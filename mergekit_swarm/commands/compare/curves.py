"""Budget curves: what a search method had found after each number of dev evaluations.

While a method with a budget runs (the swarm, random search, LoraHub, CMA-ES), the scorer
offers every dev evaluation to a `Trace`, which keeps the improvements of the best-so-far dev
utility. Afterwards the incumbent at a few evaluation counts is also scored on test, for the
report only (nothing chooses on it), so a user sees how many evaluations pay off on data the
search never saw. The curves go into `leaderboard.json` and `budget_curves.png`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

TESTED_POINTS = 6  # incumbents scored on test per method: at 1/6, 2/6, ... of its evaluations


C = TypeVar("C")  # what a candidate is (the scorer's `Candidate`)


@dataclass
class Trace(Generic[C]):
    """The dev evaluations a method made, in order, and where its best-so-far improved."""

    evaluations: int = 0
    improvements: list[tuple[int, float, C]] = field(default_factory=list)  # (evaluations, dev, candidate)

    def offer(self, candidate: C, utility: float) -> None:
        self.evaluations += 1
        if math.isfinite(utility) and (not self.improvements or utility > self.improvements[-1][1]):
            self.improvements.append((self.evaluations, utility, candidate))

    def tested(self, points: int = TESTED_POINTS) -> list[int]:
        """Indices of the improvements to score on test: the incumbent at `points` evenly spaced
        evaluation counts (the last one is the final incumbent)."""
        chosen: list[int] = []
        for k in range(1, points + 1):
            mark = math.ceil(self.evaluations * k / points)
            at_mark = [i for i, (used, _, _) in enumerate(self.improvements) if used <= mark]
            if at_mark and at_mark[-1] not in chosen:
                chosen.append(at_mark[-1])
        return chosen

    def curve(self, test_of: Callable[[Sequence[C]], list[float | None]] | None) -> list[dict]:
        """`[{"evaluations", "dev", "test"}]` at each improvement; `test` is None except at the
        tested points (and everywhere when `test_of` is None, without a test split)."""
        tested = self.tested() if test_of is not None else []
        tests = dict(zip(tested, test_of([self.improvements[i][2] for i in tested]))) if test_of is not None and tested else {}
        return [{"evaluations": used, "dev": dev, "test": tests.get(i)} for i, (used, dev, _) in enumerate(self.improvements)]


def plot_budget_curves(utility: str, curves: dict[str, tuple[list[dict], int]], path: Path) -> None:
    """Two panels against dev evaluations: the best-so-far dev utility, and the test utility of
    the incumbent at the tested points, one line per method; `curves[title]` is (its curve, the
    evaluations it used), so each line ends where its method stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_test = any(p["test"] is not None for points, _ in curves.values() for p in points)
    fig, axes = plt.subplots(1, 2 if has_test else 1, figsize=(11 if has_test else 6, 4), dpi=110, squeeze=False)
    for title, (points, used) in curves.items():
        if not points:
            continue
        x = [p["evaluations"] for p in points] + [max(used, points[-1]["evaluations"])]
        (line,) = axes[0, 0].step(x, [p["dev"] for p in points] + [points[-1]["dev"]], where="post", label=title)
        tested = [p for p in points if p["test"] is not None]
        if has_test and tested:
            axes[0, 1].plot(
                [p["evaluations"] for p in tested], [p["test"] for p in tested], "o-", color=line.get_color(), label=title
            )
    axes[0, 0].set_title("best dev utility so far")
    if has_test:
        axes[0, 1].set_title("test utility of the current best (report only)")
    for ax in axes[0]:
        ax.set_xlabel("dev evaluations")
        ax.set_ylabel(f"{utility} utility")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
