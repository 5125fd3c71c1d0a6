"""The search loop: evaluate, observe, checkpoint, move; until the engine says stop."""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from mergekit_swarm import pso
from mergekit_swarm.core.console import format_utility
from mergekit_swarm.core.errors import UtilityError
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.search.evaluator import Evaluation, ParticleEvaluator
from mergekit_swarm.search.run_state import Checkpoint, History, RunState
from mergekit_swarm.weights.kernels import one_hot


def start_swarm(
    settings: pso.SwarmSettings, evaluator: ParticleEvaluator, experts: int, layout: GroupLayout
) -> tuple[pso.SwarmState, dict[int, Evaluation]]:
    """The initial swarm, and the evaluations of iteration 0 already made: with `initial: merges`
    the experts are evaluated first (the merges need their utilities), and not again."""
    if settings.initial != "merges":
        return pso.initialize(settings, experts, len(layout)), {}
    results = list(evaluator.evaluate([one_hot(layout, experts, k) for k in range(experts)], settings.search_split))
    return pso.initialize(settings, experts, len(layout), [r.utility for r in results]), dict(enumerate(results))


def run_search(
    settings: pso.SwarmSettings,
    evaluator: ParticleEvaluator,
    files: RunState,
    checkpoint: Checkpoint,
    *,
    known: dict[int, Evaluation] | None = None,
    fail_fast: bool = False,
    quiet: bool = False,
) -> Checkpoint:
    """Drive the swarm in `checkpoint` to the end, saving after every iteration.

    History lines (one per evaluation) are appended as evaluations finish; the checkpoint
    records how many bytes of history belong to the saved state. `known`: evaluations of
    iteration 0 already made (`start_swarm`), by particle.
    """
    known = dict(known or {}) if checkpoint.state.iteration == 0 and not checkpoint.state.evaluated else {}
    state = checkpoint.state
    progress = _Progress(settings, checkpoint, quiet)
    with files.history() as history:
        while True:
            if not state.evaluated:
                utilities = _evaluate_iteration(settings, evaluator, checkpoint, history, progress, known, fail_fast)
                pso.observe(state, utilities, settings)
                if state.iteration == 0:
                    checkpoint.expert_dev = [u if math.isfinite(u) else None for u in utilities[: state.shape[2]]]
                checkpoint.history_bytes = history.sync()
                files.save(checkpoint)
                progress.iteration_done(state.iteration)
            if state.done:
                break
            pso.step(state, settings)
    progress.close()
    return checkpoint


class _Progress:
    """The tqdm bar of a search: iterations, the best utility so far, failed evaluations, the ETA."""

    def __init__(self, settings: pso.SwarmSettings, checkpoint: Checkpoint, quiet: bool):
        self.checkpoint = checkpoint
        self.bar = tqdm(
            total=settings.max_iterations,
            initial=checkpoint.state.iteration,
            desc="model swarms",
            unit="it",
            disable=quiet,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.show()

    def show(self, particle: int | None = None) -> None:
        state = self.checkpoint.state
        postfix = {"best": format_utility(state.global_best_utility), "failed": self.checkpoint.failed}
        if particle is not None:
            postfix["particle"] = f"{particle}/{state.shape[0]}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(0)  # redraws at most every `mininterval` seconds, so logs stay readable

    def iteration_done(self, iteration: int) -> None:
        self.show()
        if iteration > 0:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _evaluate_iteration(
    settings: pso.SwarmSettings,
    evaluator: ParticleEvaluator,
    checkpoint: Checkpoint,
    history: History,
    progress: _Progress,
    known: dict[int, Evaluation],
    fail_fast: bool,
) -> list[float]:
    """Every particle's utility at this iteration (evaluated in groups, recorded one by one as they
    finish); a particle skipped by evaluation dropout keeps its last one."""
    state = checkpoint.state
    particles = state.shape[0]
    pending = [state.positions[i] for i in range(particles) if not state.skip[i] and i not in known]
    results = evaluator.evaluate(pending, settings.search_split)
    utilities, errors = [], []
    for i in range(particles):
        progress.show(i + 1)
        if state.skip[i]:  # evaluation dropout: keep the particle's last utility
            checkpoint.skipped += 1
            utilities.append(float(state.utilities[i]))
            history.append(_skipped_record(state.iteration, i, utilities[-1]))
            continue
        result = known.pop(i) if i in known else next(results)
        checkpoint.fallbacks += result.fallback is not None
        if result.failed:
            checkpoint.failed += 1
            errors.append(result.error)
            if fail_fast:
                raise UtilityError(f"utility failed on particle {i} at iteration {state.iteration}: {result.error}")
        history.append(_record(state.iteration, i, result))
        utilities.append(result.utility)
    evaluated = particles - int(state.skip.sum())
    if errors and len(errors) == evaluated:  # systemic: stop, resumable
        raise UtilityError(
            f"the utility failed on all {evaluated} evaluated particles of iteration {state.iteration}; first error: {errors[0]}"
        )
    return utilities


def _record(iteration: int, particle: int, result: Evaluation) -> dict:
    """One line of swarm_history.jsonl."""
    record = {
        "iteration": iteration,
        "particle": particle,
        "utility": None if result.failed else result.utility,
        "wall_time": round(result.seconds, 6),
    }
    if result.failed:
        record["error"] = result.error
    if result.details:
        record["details"] = result.details
    if result.fallback:
        record["fallback"] = result.fallback
    return record


def _skipped_record(iteration: int, particle: int, reused: float) -> dict:
    """A history line for an evaluation that dropout skipped (its last utility is reused)."""
    return {
        "iteration": iteration,
        "particle": particle,
        "utility": reused if math.isfinite(reused) else None,
        "wall_time": 0.0,
        "skipped": True,
    }
