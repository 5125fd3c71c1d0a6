"""One swarm run from recipe to published output folder.

recipe -> expert pool + parameter groups -> resident model -> search loop (checkpointed)
-> winner, test report -> weights, recipe, card, plot, history -> rename into place.
Everything that can be checked is checked before the first evaluation.
"""

from __future__ import annotations

import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mergekit_swarm import pso
from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.errors import ConfigError, UtilityError
from mergekit_swarm.experts import ExpertPool, LoraPool, open_recipe_pool
from mergekit_swarm.groups import GroupLayout, group_layout
from mergekit_swarm.materialize import one_hot
from mergekit_swarm.options import RunOptions
from mergekit_swarm.output.card import render_card
from mergekit_swarm.output.model_folder import write_model_folder
from mergekit_swarm.output.plot import plot_history, read_history
from mergekit_swarm.output.result import SwarmResult
from mergekit_swarm.pso import Granularity
from mergekit_swarm.resident import ResidentModel
from mergekit_swarm.search.evaluator import ParticleEvaluator, open_evaluator
from mergekit_swarm.search.loop import run_search
from mergekit_swarm.search.rundir import Checkpoint, RunDirectory
from mergekit_swarm.tokenizer import load_tokenizer, tokenizer_folder, vocabulary_note
from mergekit_swarm.utilities import Utility

__all__ = ["RunOptions", "SearchSetup", "prepare", "run_swarm"]


def run_swarm(recipe: SwarmRecipe, out: str | Path, options: RunOptions | None = None) -> SwarmResult:
    """Search, then write the winner to `out`; returns the run's summary.

    With `options.resume`, an interrupted run of the same recipe continues from its last
    checkpoint, and a finished one is returned as is.
    """
    options = options or RunOptions()
    say = _printer(options.quiet)
    rundir = RunDirectory(Path(out))
    written = recipe
    recipe = recipe.resolve(
        allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code, cache_dir=options.cache_dir
    )  # Hub models, first
    fingerprint = recipe.fingerprint()
    if options.resume and rundir.finished(fingerprint):
        say(f"{rundir.out} already holds the finished run of this recipe")
        return SwarmResult.read(rundir.out)

    evaluation = recipe.evaluation
    if options.backend is not None:
        evaluation = evaluation.model_copy(update={"backend": options.backend})
    # Ray workers build their own utilities: the driver loads no reward or judge model
    setup = prepare(recipe, options, recipe.swarm.granularity, build_utilities=evaluation.backend == "local")
    pool, layout = setup.pool, setup.layout
    for note in setup.notes:
        say(f"note: {note}")
    checkpoint = rundir.open(fingerprint, resume=options.resume, overwrite=options.overwrite)
    particles = recipe.swarm.particle_count(len(pool))
    if checkpoint is None:
        checkpoint = Checkpoint(fingerprint, pso.initialize(recipe.swarm, len(pool), len(layout)))
        say(
            f"{len(pool)} {'LoRA adapters' if setup.is_lora else 'full models'}, {particles} particles, "
            f"{len(layout)} parameter group(s) ({layout.granularity}), utility {recipe.utility.type}"
        )
    else:
        say(f"resuming {rundir.work} at iteration {checkpoint.state.iteration}")
    try:
        evaluator = open_evaluator(setup, options, evaluation, recipe=written, particles=particles)
    except BaseException:  # workers or the model could not start: nothing was evaluated, nothing to keep
        rundir.discard_unstarted()
        raise
    with closing(evaluator):  # Ray: the workers are shut down however the search ends, Ctrl-C included
        checkpoint = run_search(recipe.swarm, evaluator, rundir, checkpoint, fail_fast=options.fail_fast, quiet=options.quiet)
        winner = pso.winner(checkpoint.state)
        expert_test, winner_test = _test_report(evaluator, layout, len(pool), winner, options.fail_fast)
    resident = getattr(evaluator, "resident", None)  # the local backend's; Ray's lived on the workers
    if options.merge_lora and resident is None:
        resident = setup.resident_model(options)

    tokenizer = load_tokenizer(setup.tokenizer_source, recipe, options.trust_remote_code)  # as loaded, no pad added
    with rundir.writing_outputs(resumable=True):  # disk full: one line, the search is kept for --resume
        rundir.clear_outputs()  # files of an earlier, interrupted write (maybe with other options)
        kind = write_model_folder(rundir.work, recipe, pool, layout, winner, options, tokenizer=tokenizer, resident=resident)
        result = _result(pool, layout, checkpoint, particles, expert_test, winner_test, kind)
        _write_reports(rundir, result, recipe, card=options.write_model_card)
        rundir.publish()
    say(f"wrote {rundir.out}")
    return result


def _result(
    pool: ExpertPool,
    layout: GroupLayout,
    checkpoint: Checkpoint,
    particles: int,
    expert_test: list[float | None] | None,
    winner_test: float | None,
    kind: str,
) -> SwarmResult:
    state, winner = checkpoint.state, pso.winner(checkpoint.state)
    return SwarmResult(
        experts=pool.names,
        expert_dev=checkpoint.expert_dev or [],
        expert_test=expert_test,
        winner_dev=state.global_best_utility,
        winner_test=winner_test,
        groups=list(layout.names),
        coefficients=winner.tolist(),
        granularity=layout.granularity,
        iterations=state.iteration,
        evaluations=(state.iteration + 1) * particles - checkpoint.skipped,
        failed=checkpoint.failed,
        restarts=state.restarts,
        stop_reason=state.stop_reason or "",
        output_kind=kind,
    )


@dataclass(frozen=True)
class SearchSetup:
    """Everything a search needs, checked before any output folder is touched."""

    recipe: SwarmRecipe
    pool: ExpertPool
    layout: GroupLayout
    dev: Utility | None  # None when built without utilities (the Ray driver)
    test: Utility | None
    tokenizer_source: Path | str
    notes: tuple[str, ...] = ()  # what the user should know before the search (printed by the run)

    @property
    def is_lora(self) -> bool:
        return isinstance(self.pool, LoraPool)

    def slots(self, particles_per_batch: int) -> int:
        """Particles one resident model holds and scores together: adapter slots for LoRA pools, else 1."""
        return particles_per_batch if self.is_lora else 1

    def resident_model(self, options: RunOptions, slots: int = 1) -> ResidentModel:
        """Load the model particles are written into (the base with adapter slots, or the first expert)."""
        from mergekit.common import dtype_from_name

        recipe = self.recipe
        merge_dtype, out_dtype = dtype_from_name(recipe.dtype), dtype_from_name(recipe.out_dtype)
        return ResidentModel(
            self.pool,
            self.layout,
            model_source=recipe.base_model if self.is_lora else recipe.experts[0],
            tokenizer=load_tokenizer(self.tokenizer_source, recipe, options.trust_remote_code),
            model_dtype=merge_dtype if self.is_lora else out_dtype,
            merge_dtype=merge_dtype,
            out_dtype=out_dtype,
            device=options.device,
            trust_remote_code=options.trust_remote_code,
            slots=self.slots(slots),
        )


def prepare(recipe: SwarmRecipe, options: RunOptions, granularity: Granularity, *, build_utilities: bool = True) -> SearchSetup:
    """Open the utilities, the expert pool and its parameter groups of a resolved recipe.

    Without `build_utilities`, `dev` and `test` are None (whoever evaluates builds them)."""
    dev, test = None, None
    if build_utilities:
        dev, test = recipe.utility.build("dev"), recipe.utility.build("test")
        if dev is None:
            raise ConfigError(f"{recipe.source}: utility: nothing to evaluate on the dev side")
    pool = open_recipe_pool(recipe, allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code)
    if options.merge_lora and not isinstance(pool, LoraPool):
        raise ConfigError("--merge-lora applies to LoRA experts only; these experts are full models")
    tokenizer_source = tokenizer_folder(recipe, options.trust_remote_code)
    note = vocabulary_note(recipe, tokenizer_source, options.trust_remote_code)
    layout = group_layout(pool, granularity)
    return SearchSetup(recipe, pool, layout, dev, test, tokenizer_source, notes=(note,) if note else ())


def _test_report(
    evaluator: ParticleEvaluator, layout: GroupLayout, experts: int, winner: np.ndarray, fail_fast: bool
) -> tuple[list[float | None] | None, float | None]:
    """Test utility of every expert and of the winner (reported only, never searched on)."""
    if "test" not in evaluator.splits:
        return None, None
    particles = [one_hot(layout, experts, k) for k in range(experts)] + [winner]
    scores: list[float | None] = []
    for i, result in enumerate(evaluator.evaluate(particles, "test")):
        if result.failed and fail_fast:
            raise UtilityError(f"test utility failed on {f'expert {i}' if i < experts else 'the winner'}: {result.error}")
        scores.append(None if result.failed else result.utility)
    return scores[:experts], scores[experts]


def _write_reports(rundir: RunDirectory, result: SwarmResult, recipe: SwarmRecipe, *, card: bool) -> None:
    work = rundir.work
    result.write(work)
    header = (  # the file's name only: this folder may be published, the user's directory layout need not be
        f"# Recipe of this run, copied from {Path(recipe.source).name}\n"
        "# (relative paths below are relative to that file's folder)\n"
    )
    (work / "swarm.yml").write_text(header + recipe.text, encoding="utf-8")
    best_expert = max((u for u in result.expert_dev if u is not None), default=None)
    plot_history(read_history(rundir.history_path), best_expert, work / "swarm_history.png")
    if card:
        text = render_card(
            recipe,
            title=rundir.out.name,
            output_kind=result.output_kind,
            result=result,
            settings=recipe.swarm,
            utility_type=recipe.utility.type,
        )
        (work / "README.md").write_text(text, encoding="utf-8")


def _printer(quiet: bool):
    def say(message: str) -> None:
        if not quiet:
            tqdm.write(message, file=sys.stderr)

    return say
