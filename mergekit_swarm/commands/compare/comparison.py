"""`run_comparison`: every requested method on one recipe's experts and utility, then the report."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

from mergekit_swarm.commands.compare import search_baselines as search
from mergekit_swarm.commands.compare.baselines import BASELINE_FUNCTIONS, TITLES, Choice, ExpertScores, expert_mix
from mergekit_swarm.commands.compare.curves import plot_budget_curves
from mergekit_swarm.commands.compare.leaderboard import Entry, Leaderboard
from mergekit_swarm.commands.compare.plan import CompareOptions
from mergekit_swarm.commands.compare.scoring import LORA_CACHE, Candidate, MergekitMerge, Mix, Scorer
from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.core.console import format_utility, printer
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.names import CURVES_PLOT, RECIPE_COPY, RECIPES_FOLDER, TEST_EXAMPLES
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.core.storage import writing
from mergekit_swarm.experts import LoraPool
from mergekit_swarm.output.emergence import emergence
from mergekit_swarm.output.mergekit_config import recipe_of
from mergekit_swarm.output.rundir import RunDirectory
from mergekit_swarm.pso import Granularity
from mergekit_swarm.search.evaluator import Evaluation
from mergekit_swarm.search.setup import SearchSetup, prepare

BUDGETED = ("swarm", "search")  # families whose methods get a budget curve


def run_comparison(
    recipe: SwarmRecipe, out: str | Path, options: RunOptions | None = None, compare: CompareOptions | None = None
) -> Leaderboard:
    """Compare the swarm with simpler merges of the same experts, on the same utility.

    Runs the one-shot baselines (best expert, soups, mergekit's task arithmetic, TIES, DARE-TIES,
    SLERP, Model Stock), the swarm at each granularity, and the search baselines (random search,
    LoraHub, CMA-ES) with the swarm's number of evaluations; every method chooses on dev, test is
    only measured. The leaderboard folder is written atomically; a comparison is not resumable.

    Args:
        recipe (`SwarmRecipe`):
            The search recipe whose experts and utility are compared, from `load_recipe`.
        out (`str` or `Path`):
            The leaderboard folder (leaderboard.md/.json/.png, a card, a recipe per method).
        options (`RunOptions`, *optional*):
            Device, overwrite, quiet, ... as for `run_swarm`.
        compare (`CompareOptions`, *optional*):
            Which baselines, search baselines and granularities, the budget and the seed.

    Returns:
        `Leaderboard`: one entry per method (dev, test, evaluations, seconds, settings, recipe).

    Raises:
        `ConfigError`: an unknown method, or a search baseline whose package is missing
            (`pip install 'mergekit-swarm[compare]'`).
        `ExpertError`, `UtilityError`: as for `run_swarm`.
        `OutputError`: `out` exists, or the storage refused a write (nothing is left behind).

    Example:

    ```python
    >>> from mergekit_swarm import load_recipe
    >>> from mergekit_swarm.commands.compare import CompareOptions, run_comparison
    >>> board = run_comparison(load_recipe("swarm.yml"), "board/", compare=CompareOptions(search=("lorahub",)))
    >>> print(board.markdown())
    ```
    """
    options, compare = options or RunOptions(), compare or CompareOptions()
    for method in compare.search:  # a missing optional package must not wait for the end of the swarm
        search.require(method)
    say = printer(options.quiet)
    recipe = recipe.resolve(options)
    setup = prepare(recipe, options, recipe.swarm.granularity)
    rundir = RunDirectory(Path(out), "compare")
    rundir.open("compare:" + recipe.fingerprint(), resume=False, overwrite=options.overwrite, inputs=recipe.inputs())
    try:
        with writing(rundir.work):  # disk full: one line naming the file
            board = _compare(recipe, setup, compare, options, rundir.work, say)
            rundir.publish()
    except BaseException:  # not resumable: an interrupted comparison leaves nothing behind
        shutil.rmtree(rundir.work, ignore_errors=True)
        raise
    say(f"wrote {rundir.out}")
    return board


def _compare(
    recipe: SwarmRecipe, setup: SearchSetup, compare: CompareOptions, options: RunOptions, work: Path, say: Callable
) -> Leaderboard:
    """Every requested method in order (baselines, swarm runs, search baselines); the report in `work`."""
    granularities = compare.swarm_granularities(recipe.swarm.granularity)
    seed = compare.seed if compare.seed is not None else recipe.swarm.seed
    cma_layout: tuple[Granularity, ...] = ("layer",) if "cma_es" in compare.search else ()
    scorer = Scorer(setup, options, work, [*granularities, *cma_layout], seed)
    methods = _Methods(scorer, setup, recipe.utility.right_or_wrong() and scorer.has_test(), work, say)
    experts = ExpertScores(scorer)
    for method in compare.baselines:
        methods.record(method, TITLES[method], "baseline", lambda m=method: BASELINE_FUNCTIONS[m](scorer, experts))
    budget = _swarms(methods, recipe, compare, granularities, seed, options.quiet)
    for method in compare.search:
        if budget is None:  # (CompareOptions refuses search baselines without --budget when no swarm runs)
            raise ConfigError("search baselines need --budget when no swarm is run")
        methods.record(method, TITLES[method], "search", lambda m=method: search.SEARCH_FUNCTIONS[m](scorer, budget, seed))
    shutil.rmtree(work / LORA_CACHE, ignore_errors=True)  # baked experts: scratch, not output
    kind = "lora" if setup.is_lora else "full"
    board = Leaderboard(
        recipe.utility.type, list(setup.pool.names), kind, budget if compare.search else None, seed, methods.entries
    )
    _write_report(board, methods, recipe, work)
    return board


def _swarms(
    methods: _Methods,
    recipe: SwarmRecipe,
    compare: CompareOptions,
    granularities: tuple[Granularity, ...],
    seed: int,
    quiet: bool,
) -> int | None:
    """The swarm at each granularity (and the longer one); returns the search baselines' budget: the
    evaluations of the first swarm, unless one is given. A swarm that raced is charged in the dev examples
    it scored: the budget is that many examples' worth of whole evaluations (the baselines do not race)."""
    scorer, work = methods.scorer, methods.work
    settings = recipe.swarm.model_copy(update={"seed": seed})
    first = None
    for granularity in granularities:
        entry = methods.record(
            f"swarm_{granularity}",
            f"Model Swarms ({granularity})",
            "swarm",
            lambda g=granularity: search.swarm(scorer, settings, g, work / f"swarm_{g}", quiet),
        )
        first = first or entry
    if compare.long_swarm:  # the same search, `long_swarm` times longer: does more budget pay off?
        k, g = compare.long_swarm, (granularities or (recipe.swarm.granularity,))[0]
        longer = settings.model_copy(update={"max_iterations": settings.max_iterations * k, "patience": settings.patience * k})
        folder = work / f"swarm_{g}_x{k}"
        methods.record(
            folder.name, f"Model Swarms ({g}, {k}x iterations)", "swarm", lambda: search.swarm(scorer, longer, g, folder, quiet)
        )
    if compare.budget or first is None:
        return compare.budget
    scored, in_full = first.settings.get("examples_scored"), first.settings.get("examples_in_full")
    return max(1, round(first.evaluations * scored / in_full)) if scored and in_full else first.evaluations


class _Methods:
    """Runs each method, scores its choice on test, writes its recipe, and keeps its leaderboard entry."""

    def __init__(self, scorer: Scorer, setup: SearchSetup, per_example: bool, work: Path, say: Callable):
        self.scorer, self.setup, self.per_example, self.work, self.say = scorer, setup, per_example, work, say
        self.tests = _TestScores(scorer)
        self.entries: list[Entry] = []
        self.examples: dict[str, dict] = {}  # method -> its choice's per-example test scores

    def record(self, method: str, title: str, family: str, run: Callable[[], Choice]) -> Entry:
        scorer, tests = self.scorer, self.tests
        start, before = time.perf_counter(), scorer.evaluations
        with scorer.tracing() if family in BUDGETED else contextlib.nullcontext() as trace:
            choice = run()
        seconds = time.perf_counter() - start
        test = tests.of([choice.candidate])[0] if choice.candidate is not None else None
        settings = choice.settings
        pool = self.setup.pool
        if isinstance(pool, LoraPool) and _mixes_adapters(choice.candidate, pool):  # say in which space
            title, settings = f"{title}, {pool.space} space", {**settings, "lora_space": pool.space}
        entry = Entry(
            method,
            title,
            family,
            dev=choice.dev if math.isfinite(choice.dev) else None,
            test=_value(test),
            evaluations=scorer.evaluations - before + choice.extra_evaluations,
            seconds=round(seconds, 2),
            settings=settings,
            recipe=_write_recipe(self.work, method, title, choice, scorer),
            note=choice.note,
            curve=trace.curve(tests.values if scorer.has_test() else None) if trace else [],
            emergence=emergence(tests.experts(), test.per_example) if self.per_example and test else None,
        )
        self.entries.append(entry)
        self.examples[method] = dict(test.per_example) if test else {}
        scores = f"dev {format_utility(entry.dev)}, test {format_utility(entry.test)}"
        self.say(f"{title}: {scores} ({entry.evaluations} evaluations, {seconds:.1f} s)")
        return entry


def _write_report(board: Leaderboard, methods: _Methods, recipe: SwarmRecipe, work: Path) -> None:
    """The leaderboard, budget curves, per-example test scores and the recipe copy, in `work`."""
    board.write(work)
    curves = {e.title: (e.curve, e.evaluations) for e in board.entries if e.curve}
    if curves:
        plot_budget_curves(recipe.utility.type, curves, work / CURVES_PLOT)
    if methods.scorer.has_test():
        names = methods.setup.pool.names if methods.per_example else ()
        methods.tests.write(work / TEST_EXAMPLES, methods.examples, names)
    header = f"# Recipe of this comparison, copied from {Path(recipe.source).name}\n"
    (work / RECIPE_COPY).write_text(header + recipe.text, encoding="utf-8")


class _TestScores:
    """Test evaluations, for the report only: each distinct candidate is scored once (a budget
    curve's final point is usually the method's choice, the best expert is an expert)."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._done: dict[object, Evaluation] = {}

    def of(self, candidates: Sequence[Candidate]) -> Sequence[Evaluation | None]:
        if not self.scorer.has_test():
            return [None] * len(candidates)
        return self._tested(candidates)

    def values(self, candidates: Sequence[Candidate]) -> list[float | None]:
        return [_value(e) for e in self.of(candidates)]

    def experts(self) -> list[dict]:
        """The experts' per-example test scores (asked for only when there is a test split)."""
        return [e.per_example for e in self._tested([expert_mix(self.scorer, k) for k in range(self.scorer.experts)])]

    def _tested(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        keys = [_key(c) for c in candidates]
        new = {k: c for k, c in zip(keys, candidates) if k not in self._done}
        self._done.update(zip(new, self.scorer.evaluate(list(new.values()), "test")))
        return [self._done[k] for k in keys]

    def write(self, path: Path, methods: dict[str, dict], experts: Sequence[str]) -> None:
        """Each method's per-example test scores (and the experts', when emergence was measured):
        what a paired bootstrap of two methods' difference needs."""
        data = {
            "methods": {method: found for method, found in methods.items() if found},
            "experts": dict(zip(experts, self.experts())) if experts else {},
        }
        path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def _key(candidate: Candidate) -> object:
    if isinstance(candidate, Mix):
        return ("mix", candidate.granularity, candidate.coefficients.shape, candidate.coefficients.tobytes())
    return ("mergekit", json.dumps(candidate.config, sort_keys=True, default=str))


def _mixes_adapters(candidate, pool) -> bool:
    """Whether a method's choice mixes LoRA experts (an expert alone is the same in either space)."""
    if not (isinstance(candidate, Mix) and isinstance(pool, LoraPool)):
        return False
    return bool((np.count_nonzero(candidate.coefficients, axis=1) > 1).any())


def _value(result: Evaluation | None) -> float | None:
    return None if result is None or result.failed else result.utility


def _write_recipe(folder: Path, method: str, title: str, choice: Choice, scorer: Scorer) -> str | None:
    """The method's choice as a recipe file in `folder/recipes/`; returns its relative path."""
    candidate = choice.candidate
    if candidate is None:
        return None
    recipe = scorer.setup.recipe
    if isinstance(candidate, MergekitMerge):
        seed = f" --random-seed {scorer.seed}" if "dare" in method else ""  # DARE's random drops
        text = f"# {title}: `mergekit-yaml {RECIPES_FOLDER}/{method}.yml out/{seed}` reproduces it\n" + yaml.safe_dump(
            candidate.published, sort_keys=False
        )
    else:
        assert isinstance(candidate, Mix)
        layout, file = scorer.layout(candidate.granularity), f"{RECIPES_FOLDER}/{method}.yml"
        pool = scorer.setup.pool
        if isinstance(pool, LoraPool) and pool.space == "update":  # the baked experts, mixed by stock mergekit
            how = f"`mergekit-yaml {file} out/` reproduces it (to float rounding)"
        else:
            how = f"`mergekit-swarm apply {file} out/` reproduces it"
        text = f"# {title}: {how}\n" + recipe_of(recipe, pool, layout, candidate.coefficients, file=file)
    path = folder / RECIPES_FOLDER / f"{method}.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return f"{RECIPES_FOLDER}/{method}.yml"
