"""The search loop: evaluate, observe, checkpoint, move; until the engine says stop."""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from mergekit_swarm import pso
from mergekit_swarm.core.console import format_utility
from mergekit_swarm.core.errors import UtilityError
from mergekit_swarm.experts.groups import GroupLayout
from mergekit_swarm.search.evaluator import Evaluation, ParticleEvaluator, Racing
from mergekit_swarm.search.run_state import Checkpoint, History, RunState
from mergekit_swarm.utilities.racing import RaceLimit
from mergekit_swarm.weights.kernels import one_hot


def start_swarm(
    settings: pso.SwarmSettings, evaluator: ParticleEvaluator, experts: int, layout: GroupLayout
) -> tuple[pso.SwarmState, dict[int, Evaluation]]:
    """The initial swarm, and the evaluations of iteration 0 already made: with `initial: merges`
    the experts are evaluated first (the merges need their utilities), and not again."""
    if settings.initial != "merges":
        return pso.initialize(settings, experts, len(layout)), {}
    racing = Racing(settings.racing_slices, [None] * experts, settings.racing_z) if settings.racing != "off" else None
    results = list(evaluator.evaluate([one_hot(layout, experts, k) for k in range(experts)], settings.search_split, racing))
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

    History lines (one per evaluation, one more for a raced evaluation finished later) are appended
    as evaluations finish; the checkpoint records how many bytes of history belong to the saved
    state. `known`: evaluations of iteration 0 already made (`start_swarm`), by particle.
    """
    known = dict(known or {}) if checkpoint.state.iteration == 0 and not checkpoint.state.evaluated else {}
    state = checkpoint.state
    progress = _Progress(settings, checkpoint, quiet)
    began = time.perf_counter()  # the search's own time: evaluations, engine steps, bookkeeping
    checkpoint.search_seconds += sum(e.seconds for e in known.values())  # (start_swarm's, before the loop)
    with files.history() as history:
        while True:
            if not state.evaluated:
                results = _evaluate_iteration(settings, evaluator, checkpoint, history, progress, known, fail_fast)
                bests = state.best_utilities.copy()
                pso.observe(state, [r.utility if isinstance(r, Evaluation) else r for r in results], settings)
                _keep_best_scores(settings, checkpoint, results, bests)
                _finish_for_probes(settings, evaluator, checkpoint, history, results)
                if state.iteration == 0:
                    checkpoint.expert_dev = [float(u) if math.isfinite(u) else None for u in state.utilities[: state.shape[2]]]
                checkpoint.history_bytes = history.sync()
                checkpoint.search_seconds += time.perf_counter() - began
                files.save(checkpoint)
                began = time.perf_counter()
                progress.iteration_done(state.iteration)
            if state.done:
                break
            pso.step(state, settings)
    progress.close()
    return checkpoint


def racing_for(settings: pso.SwarmSettings, checkpoint: Checkpoint, particles: list[int]) -> Racing | None:
    """What `swarm.racing` asks of the evaluation of `particles` at this iteration: each stopped once it
    can no longer (exact), or most likely not (confident: compared example by example with its personal
    best where that point's scores are kept), beat its personal best nor fall below the global worst (at
    iteration 0, with no personal best yet, none is stopped: they are only counted)."""
    if settings.racing == "off":
        return None
    state = checkpoint.state
    if state.iteration == 0:
        return Racing(settings.racing_slices, [None] * len(particles), settings.racing_z)  # counted only
    worst, kept = state.global_worst_utility, checkpoint.best_scores or {}
    limits = [RaceLimit(float(state.best_utilities[i]), worst, kept.get(i)) for i in particles]
    return Racing(settings.racing_slices, limits, settings.racing_z)


def _keep_best_scores(
    settings: pso.SwarmSettings, checkpoint: Checkpoint, results: list[Evaluation | float], bests: np.ndarray
) -> None:
    """`racing: confident` compares each particle with its personal best example by example: keep the
    per-example scores of every evaluation that just became one (`bests`: the personal bests before it),
    or forget the old point's where the new one's are unknown (scored without racing, after a failure)."""
    if settings.racing != "confident":
        return
    kept = checkpoint.best_scores if checkpoint.best_scores is not None else {}
    for i, result in enumerate(results):
        if checkpoint.state.best_utilities[i] == bests[i]:
            continue
        partial = result.partial if isinstance(result, Evaluation) and result.stopped is None else None
        if partial is None:
            kept.pop(i, None)
        else:
            kept[i] = {component: [v for _, v in sorted(scores.items())] for component, scores in partial.scores.items()}
    checkpoint.best_scores = kept


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
        if self.checkpoint.examples_in_full:  # racing: the share of dev examples scored so far
            postfix["examples"] = f"{self.checkpoint.examples_scored / self.checkpoint.examples_in_full:.0%}"
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
) -> list[Evaluation | float]:
    """Every particle's evaluation at this iteration (evaluated in groups, recorded one by one as they
    finish); for a particle skipped by evaluation dropout, the last utility it keeps."""
    state = checkpoint.state
    particles = state.shape[0]
    order = [i for i in range(particles) if not state.skip[i] and i not in known]
    racing = racing_for(settings, checkpoint, order)
    results = evaluator.evaluate([state.positions[i] for i in order], settings.search_split, racing)
    outcome: list[Evaluation | float] = []
    errors = []
    for i in range(particles):
        progress.show(i + 1)
        if state.skip[i]:  # evaluation dropout: keep the particle's last utility
            checkpoint.skipped += 1
            reused = float(state.utilities[i])
            outcome.append(reused)
            history.append(_skipped_record(state.iteration, i, reused))
            continue
        result = known.pop(i) if i in known else next(results)
        _count(checkpoint, result)
        if result.failed:
            errors.append(result.error)
            if fail_fast:
                raise UtilityError(f"utility failed on particle {i} at iteration {state.iteration}: {result.error}")
        history.append(_record(state.iteration, i, result))
        outcome.append(result)
    evaluated = particles - int(state.skip.sum())
    if errors and len(errors) == evaluated:  # systemic: stop, resumable
        raise UtilityError(
            f"the utility failed on all {evaluated} evaluated particles of iteration {state.iteration}; first error: {errors[0]}"
        )
    return outcome


def _count(checkpoint: Checkpoint, result: Evaluation) -> None:
    checkpoint.evaluation_seconds += result.seconds
    checkpoint.fallbacks += result.fallback is not None
    checkpoint.failed += result.failed
    checkpoint.stopped += result.stopped is not None
    if result.examples is not None and result.of is not None:
        checkpoint.examples_scored += result.examples
        checkpoint.examples_in_full += result.of


def _finish_for_probes(
    settings: pso.SwarmSettings, evaluator: ParticleEvaluator, checkpoint: Checkpoint, history: History, results: list
) -> None:
    """Stall probes move the particles with the lowest utilities, so where a probe step follows, the
    particles racing stopped need a value to be ranked by. `exact`: they are scored to the end (the
    search's decisions were already exact; the probes then choose as they would without racing), each
    with a second history line. `confident`, whose stops are estimates already: each is ranked by the
    middle of its utility's interval, unscored (finishing them took back over half of what it saved)."""
    state = checkpoint.state
    stopped = {i: r for i, r in enumerate(results) if isinstance(r, Evaluation) and r.stopped is not None}
    if not stopped or state.done or not pso.probes_follow(state, settings):
        return
    if settings.racing == "confident":
        for i, result in stopped.items():
            low, high = result.stopped or (result.utility, result.utility)
            state.utilities[i] = (low + high) / 2  # within [low, high]: no best nor worst moves
        return
    evaluations = list(stopped.values())
    finished = evaluator.finish([state.positions[i] for i in stopped], evaluations, settings.search_split)
    for i, result, before in zip(stopped, finished, evaluations):
        state.utilities[i] = result.utility  # (-inf when failed, as observe records it)
        checkpoint.evaluation_seconds += result.seconds - before.seconds
        checkpoint.finished += 1
        checkpoint.examples_scored += (result.examples or 0) - (result.finished_from or 0)
        history.append(_record(state.iteration, i, result))


def _record(iteration: int, particle: int, result: Evaluation) -> dict:
    """One line of swarm_history.jsonl."""
    record = {
        "iteration": iteration,
        "particle": particle,
        "utility": None if result.failed or result.stopped is not None else result.utility,
        "wall_time": round(result.seconds, 6),  # its share of its batch's time (see shared_by)
    }
    if result.shared_by > 1:  # scored in one batch with others: the batch took wall_time * shared_by
        record["shared_by"] = result.shared_by
    if result.failed:
        record["error"] = result.error
    if result.details:
        record["details"] = result.details
    if result.fallback:
        record["fallback"] = result.fallback
    if result.examples is not None:  # racing: examples scored (a finished evaluation: on its second line, the rest)
        record["examples"] = result.examples - (result.finished_from or 0)
    if result.stopped is not None:  # racing: its utility on all of dev lies in [low, high], below its personal best
        record["stopped"] = {"low": result.stopped[0], "high": result.stopped[1], "of": result.of}
    if result.finished_from is not None:  # racing stopped it, then a stall probe step needed its full utility
        record["finished_from"] = result.finished_from
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
