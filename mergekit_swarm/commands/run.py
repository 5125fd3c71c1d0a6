"""One swarm run from recipe to published output folder, in three phases.

`_prepare`: recipe -> expert pool + parameter groups -> run folder (or the checkpoint to resume);
everything that can be checked is checked before the first evaluation. `_search`: evaluation
engine -> search loop (checkpointed) -> winner and its test report. `_publish`: weights, recipe,
card, plot, history -> one rename into place.
"""

from __future__ import annotations

import gc
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from mergekit_swarm.commands.rescore import score_folder
from mergekit_swarm.config import EvaluationSettings, SwarmRecipe
from mergekit_swarm.core.console import printer
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.names import COMPRESSED_FOLDER
from mergekit_swarm.core.protocols import Tokenizer
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.experts import ExpertPool, LoraPool
from mergekit_swarm.experts.tokenizer import load_tokenizer
from mergekit_swarm.output.compress import compress_adapter
from mergekit_swarm.output.emergence import write_examples
from mergekit_swarm.output.model_folder import write_model_folder
from mergekit_swarm.output.reports import write_reports
from mergekit_swarm.output.result import SwarmResult, result_of
from mergekit_swarm.output.rundir import RunDirectory
from mergekit_swarm.search.backends import open_evaluator
from mergekit_swarm.search.loop import run_search, start_swarm
from mergekit_swarm.search.report import Report, measure_report
from mergekit_swarm.search.run_state import Checkpoint
from mergekit_swarm.search.selection import Selection, select_winner
from mergekit_swarm.search.setup import SearchSetup, prepare
from mergekit_swarm.weights.resident import ResidentModel

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
    resolved = recipe.resolve(options)  # Hub models, first
    fingerprint = resolved.fingerprint()
    if options.resume and rundir.finished(fingerprint):
        result = SwarmResult.read(rundir.out)
        say(f"{rundir.out} already holds the finished run of this recipe")
        return result
    run = _prepare(recipe, resolved, fingerprint, rundir, options, say)
    found = _search(run, options)
    result = _publish(run, found, options)
    say(f"wrote {rundir.out}")
    return result


@dataclass
class _Run:
    """A prepared run: its resolved recipe (and the one written, which Ray workers resolve again), what
    the search needs, its evaluation settings, its folder and the checkpoint it resumes (None: a new run)."""

    recipe: SwarmRecipe
    written: SwarmRecipe
    setup: SearchSetup
    evaluation: EvaluationSettings
    rundir: RunDirectory
    fingerprint: str
    checkpoint: Checkpoint | None
    particles: int


@dataclass
class _Found:
    """What the search found: its last checkpoint, the winner chosen, the report measured after it, and the
    resident model that evaluated it where the output is written from it (--merge-lora; None on Ray workers)."""

    checkpoint: Checkpoint
    selection: Selection
    report: Report
    resident: ResidentModel | None


def _prepare(written: SwarmRecipe, recipe: SwarmRecipe, fingerprint: str, rundir: RunDirectory, options: RunOptions, say) -> _Run:
    """Open what the search needs and check it, then the run folder; nothing of the user's is touched before."""
    evaluation = recipe.evaluation
    if options.backend is not None:
        evaluation = evaluation.model_copy(update={"backend": options.backend})
    setup = prepare(recipe, options, recipe.swarm.granularity)
    if options.merge_lora and not setup.is_lora:
        raise ConfigError("--merge-lora applies to LoRA experts only; these experts are full models")
    _check_svd_rank(options, setup.pool)
    if evaluation.backend == "local":  # Ray workers build their own: the driver loads no reward or judge model
        setup.check_utilities()
    for note in setup.notes:
        say(f"note: {note}")
    checkpoint = rundir.open(fingerprint, resume=options.resume, overwrite=options.overwrite, inputs=recipe.inputs())
    particles = recipe.swarm.particle_count(len(setup.pool))
    if checkpoint is None:
        kind = "LoRA adapters" if setup.is_lora else "full models"
        say(
            f"{len(setup.pool)} {kind}, {particles} particles, {len(setup.layout)} parameter group(s) "
            f"({setup.layout.granularity}), utility {recipe.utility.type}"
        )
    else:
        say(f"resuming {rundir.work} at iteration {checkpoint.state.iteration}")
    return _Run(recipe, written, setup, evaluation, rundir, fingerprint, checkpoint, particles)


def _search(run: _Run, options: RunOptions) -> _Found:
    """The search (from its start or its checkpoint), the winner and its test report."""
    recipe, setup = run.recipe, run.setup
    try:
        evaluator = open_evaluator(setup, options, run.evaluation, recipe=run.written, particles=run.particles)
    except BaseException:  # workers or the model could not start: nothing was evaluated, nothing to keep
        run.rundir.discard_unstarted()
        raise
    with closing(evaluator):  # Ray: the workers are shut down however the search ends, Ctrl-C included
        checkpoint, known = run.checkpoint, {}
        if checkpoint is None:
            state, known = start_swarm(recipe.swarm, evaluator, len(setup.pool), setup.layout)
            checkpoint = Checkpoint(run.fingerprint, state)
        checkpoint = run_search(
            recipe.swarm, evaluator, run.rundir.state, checkpoint, known=known, fail_fast=options.fail_fast, quiet=options.quiet
        )
        selection = select_winner(checkpoint.state, recipe.swarm, evaluator)
        report = measure_report(evaluator, recipe, setup.layout, len(setup.pool), selection.coefficients, options.fail_fast)
        # kept only where the output is written from it (--merge-lora). Otherwise it goes now: a full pool's
        # winner is combined from the experts into shards of up to --out-shard-size held in memory, which
        # beside the resident model made the run's peak two models, not one
        resident = evaluator.resident_model() if options.merge_lora else None
    return _Found(checkpoint, selection, report, resident)


def _publish(run: _Run, found: _Found, options: RunOptions) -> SwarmResult:
    """Write the winner, its recipe, card, history and plot in the run folder, then publish it."""
    recipe, setup, rundir = run.recipe, run.setup, run.rundir
    resident = found.resident
    if options.merge_lora and resident is None:  # the search ran on Ray workers: load a resident model here
        resident = setup.resident_model(options)
    tokenizer = load_tokenizer(setup.tokenizer_source, recipe, options.trust_remote_code)  # as loaded, no pad added
    gc.collect()  # the resident model, if unused here, is freed now even if a reference cycle holds it
    winner = found.selection.coefficients
    with rundir.writing_outputs(resumable=True):  # disk full: one line, the search is kept for --resume
        rundir.clear_outputs()  # files of an earlier, interrupted write (maybe with other options)
        kind = write_model_folder(
            rundir.work,
            recipe,
            setup.pool,
            setup.layout,
            winner,
            options,
            tokenizer=tokenizer,
            device=options.device,
            trust_remote_code=options.trust_remote_code,
            resident=resident,
        )
        result = result_of(setup.pool, setup.layout, found.checkpoint, run.particles, found.selection, found.report, kind)
        if options.svd_rank:
            result.compressed = _compressed(rundir.work, recipe, options, options.svd_rank, tokenizer, found.report.splits)
        write_reports(rundir, result, recipe, found.checkpoint.expert_dev or [], card=options.write_model_card)
        if found.report.examples:  # which examples each expert and the winner get right
            write_examples(rundir.work, setup.pool.names, found.report.examples)
        rundir.publish()
    return result


def _check_svd_rank(options: RunOptions, pool: ExpertPool) -> None:
    """--svd-rank is checked before the search, not after it."""
    if options.svd_rank is None:
        return
    if not isinstance(pool, LoraPool) or options.merge_lora:
        raise ConfigError("--svd-rank compresses a LoRA winner; these experts are full models (or --merge-lora bakes it)")
    if options.svd_rank >= pool.rank:
        raise ConfigError(f"--svd-rank {options.svd_rank} is not below the winner's rank {pool.rank}: nothing to compress")


def _compressed(work: Path, recipe: SwarmRecipe, options: RunOptions, rank: int, tokenizer: Tokenizer, splits) -> dict:
    """The winner compressed to `rank` (`--svd-rank`) beside it, scored as a user loads it (`PeftModel.from_pretrained`)."""
    folder = work / COMPRESSED_FOLDER.format(rank=rank)
    info = compress_adapter(work, folder, rank)
    tokenizer.save_pretrained(folder)
    scores = {split: score_folder(recipe, folder, split, options).value for split in ("dev", "test") if split in splits}
    return {"rank": rank, "folder": folder.name, **scores, **info}
