"""`swarm_result.json`: the machine-readable summary of a finished run."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from mergekit_swarm.core.console import format_utility
from mergekit_swarm.core.errors import OutputError
from mergekit_swarm.core.names import RESULT_FILE
from mergekit_swarm.core.storage import read_json
from mergekit_swarm.experts import ExpertPool
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.output.emergence import emergence, sentence
from mergekit_swarm.search.report import Report
from mergekit_swarm.search.run_state import Checkpoint
from mergekit_swarm.search.selection import Selection


@dataclass
class SwarmResult:
    """What a run found, and how each expert compares on dev and test."""

    experts: list[str]
    expert_dev: list[float | None]
    expert_test: list[float | None] | None
    winner_dev: float | None  # None: the winner's evaluation failed (on all of dev, measured with a holdout)
    winner_test: float | None
    groups: list[str]
    coefficients: list[list[float]]  # (groups, experts)
    granularity: str
    iterations: int
    evaluations: int
    failed: int
    restarts: int
    stop_reason: str
    output_kind: str  # "full" | "lora" | "lora-merged"
    probes: int = 0  # particles moved near the global best by swarm.stall_probes
    # --svd-rank: the winner compressed to `rank` (in `folder`), its `dev`/`test` utility and the largest
    # relative error of a module's update; the exact winner stays the output
    compressed: dict | None = None
    fallbacks: int = 0  # evaluations scored one at a time because their batched scoring failed
    emergence: dict[str, dict[str, int] | None] = field(default_factory=dict)  # per split, see output.emergence
    # with swarm.holdout: the personal bests compared on the held-out dev examples and which won
    # (dev utilities above are then over all of dev; `winner_search_dev` over the searched part)
    selection: dict | None = None
    # with swarm.racing: dev examples scored, what scoring every evaluation in full would have scored, the
    # share saved, the evaluations stopped early and those of them scored to the end for a stall probe step
    racing: dict | None = None
    # the search loop's time over every session of the run, and the part of it spent scoring particles
    # (writing them into the model included); the rest: engine steps, history, checkpoints
    timing: dict | None = None

    def write(self, folder: Path) -> None:
        (folder / RESULT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, folder: Path) -> SwarmResult:
        path = folder / RESULT_FILE
        data = read_json(path, OutputError)
        known = {f.name: f for f in fields(cls)}
        for key in data:
            if key not in known:
                raise OutputError(f"{path}: not a run's result (unknown key {key!r})")
        for key, spec in known.items():
            if key not in data and spec.default is MISSING and spec.default_factory is MISSING:
                raise OutputError(f"{path}: not a run's result (missing key {key!r})")
        return cls(**data)

    def summary(self) -> str:
        """A plain-text table: each expert's dev/test utility, then the winner's."""
        has_test = self.expert_test is not None or self.winner_test is not None
        width = max(len(n) for n in [*self.experts, "swarm winner"])
        rows = [f"{'model':<{width}}  {'dev':>8}" + (f"  {'test':>8}" if has_test else "")]
        tests = self.expert_test or [None] * len(self.experts)
        for name, dev, test in [*zip(self.experts, self.expert_dev, tests), ("swarm winner", self.winner_dev, self.winner_test)]:
            rows.append(
                f"{name:<{width}}  {format_utility(dev, 'failed'):>8}"
                + (f"  {format_utility(test, 'failed'):>8}" if has_test else "")
            )
        if self.compressed:
            c = self.compressed
            rows.append(
                f"{'rank ' + str(c['rank']) + ' (SVD)':<{width}}  {format_utility(c['dev'], 'failed'):>8}"
                + (f"  {format_utility(c.get('test'), 'failed'):>8}" if has_test else "")
            )
        found = sentence(self.emergence)
        return "\n".join(rows) + (f"\n{found}" if found else "")


def result_of(
    pool: ExpertPool,
    layout: GroupLayout,
    checkpoint: Checkpoint,
    particles: int,
    selection: Selection,
    report: Report,
    kind: str,
) -> SwarmResult:
    """A finished search's result. With a holdout, dev utilities are over all of dev (measured by the
    report); without one they are the search's own."""
    state = checkpoint.state
    holdout = selection.report()
    return SwarmResult(
        experts=pool.names,
        expert_dev=(report.expert_dev if holdout else checkpoint.expert_dev) or [],
        expert_test=report.expert_test,
        winner_dev=report.winner_dev if holdout else selection.utility,
        winner_test=report.winner_test,
        groups=list(layout.names),
        coefficients=selection.coefficients.tolist(),
        granularity=layout.granularity,
        iterations=state.iteration,
        evaluations=(state.iteration + 1) * particles - checkpoint.skipped + len(selection.candidates),
        failed=checkpoint.failed,
        fallbacks=checkpoint.fallbacks,
        restarts=state.restarts,
        probes=state.probes,
        stop_reason=state.stop_reason or "",
        output_kind=kind,
        selection={"winner_search_dev": selection.utility, **holdout} if holdout else None,
        emergence={split: emergence(e["experts"], e["winner"]) for split, e in report.examples.items()},
        racing=_racing(checkpoint),
        timing={
            "search_seconds": round(checkpoint.search_seconds, 3),
            "evaluation_seconds": round(checkpoint.evaluation_seconds, 3),
        },
    )


def _racing(checkpoint: Checkpoint) -> dict | None:
    scored, full = checkpoint.examples_scored, checkpoint.examples_in_full
    if not full:
        return None
    saved = round(1 - scored / full, 4)
    return {
        "examples_scored": scored,
        "examples_in_full": full,
        "saved": saved,
        "stopped": checkpoint.stopped,
        "finished_for_probes": checkpoint.finished,
    }
