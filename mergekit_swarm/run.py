"""One swarm run from recipe to published output folder.

recipe -> expert pool + parameter groups -> resident model -> search loop (checkpointed)
-> winner, test report -> weights, recipe, card, plot, history -> rename into place.
Everything that can be checked is checked before the first evaluation.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.console import printer
from mergekit_swarm.errors import ConfigError, UtilityError
from mergekit_swarm.experts import ExpertPool, LoraPool
from mergekit_swarm.groups import GroupLayout
from mergekit_swarm.materialize import one_hot
from mergekit_swarm.names import CARD_FILE, COMPRESSED_FOLDER, HISTORY_PLOT, RECIPE_COPY
from mergekit_swarm.options import RunOptions
from mergekit_swarm.output.card import render_card
from mergekit_swarm.output.compress import compress_adapter
from mergekit_swarm.output.emergence import emergence, write_examples
from mergekit_swarm.output.model_folder import write_model_folder
from mergekit_swarm.output.plot import plot_history, read_history
from mergekit_swarm.output.result import SwarmResult
from mergekit_swarm.output.rundir import RunDirectory
from mergekit_swarm.rescore import score_folder
from mergekit_swarm.search.backends import open_evaluator
from mergekit_swarm.search.checkpoint import Checkpoint
from mergekit_swarm.search.evaluator import LocalEvaluator, ParticleEvaluator
from mergekit_swarm.search.loop import run_search, start_swarm
from mergekit_swarm.search.selection import Selection, select_winner
from mergekit_swarm.search.setup import prepare
from mergekit_swarm.tokenizer import load_tokenizer

__all__ = ["RunOptions", "run_swarm"]


def run_swarm(recipe: SwarmRecipe, out: str | Path, options: RunOptions | None = None) -> SwarmResult:
    """Search the experts' weight space for the recipe's utility, then write the winner to `out`.

    The run works in a hidden `.<out>.partial/` folder beside `out`, checkpointed after every
    iteration; `out` appears (one rename) only when the winner, its recipe, card, history and plot
    are all written.

    Args:
        recipe (`SwarmRecipe`):
            A search recipe, from `load_recipe`. Hub models are downloaded first (`options` say
            whether pickles and code files may be).
        out (`str` or `Path`):
            The output folder. An existing one is refused unless `options.overwrite`.
        options (`RunOptions`, *optional*):
            How to run: device, resume/overwrite, output format, backend (`local` or `ray`), ...

    Returns:
        `SwarmResult`: the experts' and the winner's dev (and test) utilities, the winner's
        coefficients per parameter group, and the search's counters (also in `out/swarm_result.json`).

    Raises:
        `ConfigError`: the recipe cannot be searched (e.g. LoRA experts without `base_model`).
        `ExpertError`: an expert, the base model or a tokenizer cannot be used (names the file and tensor).
        `UtilityError`: the utility cannot be built, or failed with `options.fail_fast`.
        `OutputError`: `out` exists, an interrupted run is in the way, or the storage refused a write
            (the run can then be resumed with `resume=True`).
        `WorkerError`: Ray workers could not start, or died more often than `max_retries`.

    Example:

    ```python
    >>> from mergekit_swarm import RunOptions, load_recipe, run_swarm
    >>> result = run_swarm(load_recipe("swarm.yml"), "out/", RunOptions(resume=True))
    >>> print(result.summary())
    ```

    With `options.resume`, an interrupted run of the same recipe continues from its last
    checkpoint (same winner, bit for bit), and a finished one is returned as is.
    """
    options = options or RunOptions()
    say = printer(options.quiet)
    rundir = RunDirectory(Path(out))
    written = recipe
    recipe = recipe.resolve(options)  # Hub models, first
    fingerprint = recipe.fingerprint()
    if options.resume and rundir.finished(fingerprint):
        result = SwarmResult.read(rundir.out)
        say(f"{rundir.out} already holds the finished run of this recipe")
        return result

    evaluation = recipe.evaluation
    if options.backend is not None:
        evaluation = evaluation.model_copy(update={"backend": options.backend})
    setup = prepare(recipe, options, recipe.swarm.granularity)
    if evaluation.backend == "local":  # a broken objective fails now, before any output is touched
        _ = setup.utilities  # (Ray workers build their own: the driver loads no reward or judge model)
    pool, layout = setup.pool, setup.layout
    _check_svd_rank(options, pool)
    for note in setup.notes:
        say(f"note: {note}")
    checkpoint = rundir.open(fingerprint, resume=options.resume, overwrite=options.overwrite, inputs=recipe.inputs())
    particles = recipe.swarm.particle_count(len(pool))
    known = {}
    if checkpoint is None:
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
        if checkpoint is None:
            state, known = start_swarm(recipe.swarm, evaluator, len(pool), layout)
            checkpoint = Checkpoint(fingerprint, state)
        checkpoint = run_search(
            recipe.swarm, evaluator, rundir.state, checkpoint, known=known, fail_fast=options.fail_fast, quiet=options.quiet
        )
        selection = select_winner(checkpoint.state, recipe.swarm, evaluator)
        winner = selection.coefficients
        report = _report(evaluator, recipe, layout, len(pool), winner, options.fail_fast)
    resident = None
    if options.merge_lora:  # the local engine's resident model; Ray's lived on the workers
        resident = evaluator.resident if isinstance(evaluator, LocalEvaluator) else setup.resident_model(options)

    tokenizer = load_tokenizer(setup.tokenizer_source, recipe, options.trust_remote_code)  # as loaded, no pad added
    with rundir.writing_outputs(resumable=True):  # disk full: one line, the search is kept for --resume
        rundir.clear_outputs()  # files of an earlier, interrupted write (maybe with other options)
        kind = write_model_folder(rundir.work, recipe, pool, layout, winner, options, tokenizer=tokenizer, resident=resident)
        result = _result(pool, layout, checkpoint, particles, selection, report, kind)
        if options.svd_rank:
            result.compressed = _compressed(rundir.work, recipe, options, tokenizer, evaluator.splits)
        result.emergence = {split: emergence(e["experts"], e["winner"]) for split, e in report.examples.items()}
        _write_reports(rundir, result, recipe, checkpoint.expert_dev or [], card=options.write_model_card)
        if report.examples:  # which examples each expert and the winner get right
            write_examples(rundir.work, pool.names, report.examples)
        rundir.publish()
    say(f"wrote {rundir.out}")
    return result


def _check_svd_rank(options: RunOptions, pool: ExpertPool) -> None:
    """--svd-rank is checked before the search, not after it."""
    if options.svd_rank is None:
        return
    if not isinstance(pool, LoraPool) or options.merge_lora:
        raise ConfigError("--svd-rank compresses a LoRA winner; these experts are full models (or --merge-lora bakes it)")
    if options.svd_rank >= pool.rank:
        raise ConfigError(f"--svd-rank {options.svd_rank} is not below the winner's rank {pool.rank}: nothing to compress")


def _compressed(work: Path, recipe: SwarmRecipe, options: RunOptions, tokenizer, splits) -> dict:
    """The winner compressed to `--svd-rank` beside it, scored as a user loads it (`PeftModel.from_pretrained`)."""
    folder = work / COMPRESSED_FOLDER.format(rank=options.svd_rank)
    info = compress_adapter(work, folder, options.svd_rank)
    tokenizer.save_pretrained(folder)
    scores = {split: score_folder(recipe, folder, split, options).value for split in ("dev", "test") if split in splits}
    return {"rank": options.svd_rank, "folder": folder.name, **scores, **info}


def _result(
    pool: ExpertPool,
    layout: GroupLayout,
    checkpoint: Checkpoint,
    particles: int,
    selection: Selection,
    report: Report,
    kind: str,
) -> SwarmResult:
    """With a holdout, dev utilities are over all of dev (measured by `_report`); without one
    they are the search's own."""
    state = checkpoint.state
    holdout = selection.report()
    return SwarmResult(
        experts=pool.names,
        expert_dev=report.expert_dev if holdout else checkpoint.expert_dev or [],
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
    )


@dataclass
class Report:
    """Utilities measured after the search, for the report only: test, and dev where the search
    saw only part of it (holdout) or per-example scores are wanted; None where not measured."""

    expert_dev: list[float | None] | None = None
    winner_dev: float | None = None
    expert_test: list[float | None] | None = None
    winner_test: float | None = None
    examples: dict = field(default_factory=dict)  # split -> which examples the experts and the winner get right


def _report(
    evaluator: ParticleEvaluator, recipe: SwarmRecipe, layout: GroupLayout, experts: int, winner: np.ndarray, fail_fast: bool
) -> Report:
    """The test utility of every expert and of the winner (reported only, never searched on), their
    utility on all of dev when the search held part of it out, and, for a utility that is a share
    of examples answered right, which dev and test examples each of them gets right."""
    particles = [one_hot(layout, experts, k) for k in range(experts)] + [winner]
    per_example = recipe.utility.right_or_wrong()
    dev_wanted = per_example or bool(recipe.swarm.holdout)
    report = Report()
    for split in [s for s in ("dev", "test") if s in evaluator.splits and (s == "test" or dev_wanted)]:
        results = list(evaluator.evaluate(particles, split))
        for i, result in enumerate(results):
            if result.failed and fail_fast:
                who = f"expert {i}" if i < experts else "the winner"
                raise UtilityError(f"{split} utility failed on {who}: {result.error}")
        values = [None if r.failed else r.utility for r in results]
        setattr(report, f"expert_{split}", values[:experts])
        setattr(report, f"winner_{split}", values[experts])
        if per_example and all(r.per_example for r in results):
            report.examples[split] = {
                "experts": [r.per_example for r in results[:experts]],
                "winner": results[experts].per_example,
            }
    return report


def _write_reports(
    rundir: RunDirectory, result: SwarmResult, recipe: SwarmRecipe, searched_expert_dev: list[float | None], *, card: bool
) -> None:
    """`searched_expert_dev`: the experts' utilities on what the search saw, to compare with its history."""
    work = rundir.work
    result.write(work)
    header = (  # the file's name only: this folder may be published, the user's directory layout need not be
        f"# Recipe of this run, copied from {Path(recipe.source).name}\n"
        "# (relative paths below are relative to that file's folder)\n"
    )
    (work / RECIPE_COPY).write_text(header + recipe.text, encoding="utf-8")
    best_expert = max((u for u in searched_expert_dev if u is not None), default=None)
    plot_history(read_history(rundir.state.history_path), best_expert, work / HISTORY_PLOT)
    if card:
        text = render_card(
            recipe,
            title=rundir.out.name,
            output_kind=result.output_kind,
            result=result,
            settings=recipe.swarm,
            utility_type=recipe.utility.type,
        )
        (work / CARD_FILE).write_text(text, encoding="utf-8")
