"""The search loop: evaluate, observe, checkpoint, move; until the engine says stop."""

from __future__ import annotations

import json
import math
import os

from tqdm.auto import tqdm

from mergekit_swarm import pso
from mergekit_swarm.errors import UtilityError
from mergekit_swarm.search.evaluator import Evaluator
from mergekit_swarm.search.rundir import Checkpoint, RunDirectory


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "-"


def run_search(
    settings: pso.SwarmSettings,
    evaluator: Evaluator,
    rundir: RunDirectory,
    checkpoint: Checkpoint,
    *,
    fail_fast: bool = False,
    quiet: bool = False,
) -> Checkpoint:
    """Drive the swarm in `checkpoint` to the end, saving after every iteration.

    History lines (one per evaluation) are appended as evaluations finish; the checkpoint
    records how many bytes of history belong to the saved state.
    """
    state = checkpoint.state
    particles = state.shape[0]
    bar = tqdm(
        total=settings.max_iterations,
        initial=state.iteration,
        desc="model swarms",
        unit="it",
        disable=quiet,
        dynamic_ncols=True,
    )

    def show(particle: int | None = None) -> None:
        postfix = {"best": _fmt(state.global_best_utility), "failed": checkpoint.failed}
        if particle is not None:
            postfix["particle"] = f"{particle}/{particles}"
        bar.set_postfix(postfix, refresh=True)

    show()
    with rundir.history_path.open("a", encoding="utf-8") as history:
        while True:
            if not state.evaluated:
                utilities = []
                for i in range(particles):
                    show(i + 1)
                    result = evaluator(state.positions[i])
                    if result.failed:
                        checkpoint.failed += 1
                        if fail_fast:
                            raise UtilityError(f"utility failed on particle {i} at iteration {state.iteration}: {result.error}")
                    record = {
                        "iteration": state.iteration,
                        "particle": i,
                        "utility": result.utility if not result.failed else None,
                        "wall_time": round(result.seconds, 6),
                    }
                    if result.failed:
                        record["error"] = result.error
                    history.write(json.dumps(record) + "\n")
                    history.flush()
                    utilities.append(result.utility)
                pso.observe(state, utilities, settings)
                if state.iteration == 0:
                    if not math.isfinite(state.global_best_utility):
                        raise UtilityError(f"the utility failed on every expert; first error: {_first_error(rundir)}")
                    checkpoint.expert_dev = [u if math.isfinite(u) else None for u in utilities[: state.shape[2]]]
                else:
                    bar.update(1)
                os.fsync(history.fileno())
                checkpoint.history_bytes = history.tell()
                rundir.save(checkpoint)
                show()
            if state.done:
                break
            pso.step(state, settings)
    bar.close()
    return checkpoint


def _first_error(rundir: RunDirectory) -> str:
    with rundir.history_path.open(encoding="utf-8") as handle:
        for line in handle:
            error = json.loads(line).get("error")
            if error:
                return error
    return "unknown"
