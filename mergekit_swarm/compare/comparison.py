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

from mergekit_swarm.compare import search_baselines as search
from mergekit_swarm.compare.baselines import BASELINE_FUNCTIONS, TITLES, Choice, ExpertScores, expert_mix
from mergekit_swarm.compare.curves import plot_budget_curves
from mergekit_swarm.compare.leaderboard import Entry, Leaderboard
from mergekit_swarm.compare.options import CompareOptions
from mergekit_swarm.compare.scoring import LORA_CACHE, Candidate, MergekitMerge, Mix, Scorer
from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.console import format_utility, printer
from mergekit_swarm.experts import LoraPool
from mergekit_swarm.names import CURVES_PLOT, RECIPE_COPY, RECIPES_FOLDER, TEST_EXAMPLES
from mergekit_swarm.options import RunOptions
from mergekit_swarm.output.emergence import emergence
from mergekit_swarm.output.recipe import recipe_of
from mergekit_swarm.output.rundir import RunDirectory
from mergekit_swarm.search.evaluator import Evaluation
from mergekit_swarm.search.setup import SearchSetup, prepare
from mergekit_swarm.storage import writing

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
    >>> from mergekit_swarm.compare import CompareOptions, run_comparison
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
    granularities = compare.granularities if compare.granularities is not None else (recipe.swarm.granularity,)
    seed = compare.seed if compare.seed is not None else recipe.swarm.seed
    scorer = Scorer(setup, options, work, [*granularities, *(["layer"] if "cma_es" in compare.search else [])], seed)
    experts, tests = ExpertScores(scorer), _TestScores(scorer)
    per_example = recipe.utility.right_or_wrong() and scorer.has_test()  # emergence: which test examples are new
    entries: list[Entry] = []
    examples: dict[str, dict] = {}  # method -> its choice's per-example test scores

    def record(method: str, title: str, family: str, run: Callable[[], Choice]) -> Entry:
        start, before = time.perf_counter(), scorer.evaluations
        with scorer.tracing() if family in BUDGETED else contextlib.nullcontext() as trace:
            choice = run()
        seconds = time.perf_counter() - start
        test = tests.of([choice.candidate])[0] if choice.candidate is not None else None
        settings = choice.settings
        if _mixes_adapters(choice.candidate, setup.pool):  # say in which space
            title, settings = f"{title}, {setup.pool.space} space", {**settings, "lora_space": setup.pool.space}
        entry = Entry(
            method,
            title,
            family,
            dev=choice.dev if math.isfinite(choice.dev) else None,
            test=_value(test),
            evaluations=scorer.evaluations - before + choice.extra_evaluations,
            seconds=round(seconds, 2),
            settings=settings,
            recipe=_write_recipe(work, method, title, choice, scorer),
            note=choice.note,
            curve=trace.curve(tests.values if scorer.has_test() else None) if trace else [],
            emergence=emergence(tests.experts(), test.per_example) if per_example and test else None,
        )
        entries.append(entry)
        examples[method] = dict(test.per_example) if test else {}
        scores = f"dev {format_utility(entry.dev)}, test {format_utility(entry.test)}"
        say(f"{title}: {scores} ({entry.evaluations} evaluations, {seconds:.1f} s)")
        return entry

    for method in compare.baselines:
        record(method, TITLES[method], "baseline", lambda m=method: BASELINE_FUNCTIONS[m](scorer, experts))
    swarm_settings = recipe.swarm.model_copy(update={"seed": seed})
    first_swarm = None
    for granularity in granularities:
        entry = record(
            f"swarm_{granularity}",
            f"Model Swarms ({granularity})",
            "swarm",
            lambda g=granularity: search.swarm(scorer, swarm_settings, g, work / f"swarm_{g}", options.quiet),
        )
        first_swarm = first_swarm or entry
    if compare.long_swarm:  # the same search, `long_swarm` times longer: does more budget pay off?
        k, g = compare.long_swarm, (granularities or (recipe.swarm.granularity,))[0]
        longer = swarm_settings.model_copy(
            update={"max_iterations": swarm_settings.max_iterations * k, "patience": swarm_settings.patience * k}
        )
        folder = work / f"swarm_{g}_x{k}"
        record(
            folder.name,
            f"Model Swarms ({g}, {k}x iterations)",
            "swarm",
            lambda: search.swarm(scorer, longer, g, folder, options.quiet),
        )
    budget = compare.budget or (first_swarm.evaluations if first_swarm else None)
    for method in compare.search:
        record(method, TITLES[method], "search", lambda m=method: search.SEARCH_FUNCTIONS[m](scorer, budget, seed))

    shutil.rmtree(work / LORA_CACHE, ignore_errors=True)  # baked experts: scratch, not output
    board = Leaderboard(
        recipe.utility.type,
        list(setup.pool.names),
        "lora" if setup.is_lora else "full",
        budget if compare.search else None,
        seed,
        entries,
    )
    board.write(work)
    curves = {e.title: (e.curve, e.evaluations) for e in entries if e.curve}
    if curves:
        plot_budget_curves(recipe.utility.type, curves, work / CURVES_PLOT)
    if scorer.has_test():
        tests.write(work / TEST_EXAMPLES, examples, setup.pool.names if per_example else ())
    header = f"# Recipe of this comparison, copied from {Path(recipe.source).name}\n"
    (work / RECIPE_COPY).write_text(header + recipe.text, encoding="utf-8")
    return board


class _TestScores:
    """Test evaluations, for the report only: each distinct candidate is scored once (a budget
    curve's final point is usually the method's choice, the best expert is an expert)."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._done: dict[object, Evaluation] = {}

    def of(self, candidates: Sequence[Candidate]) -> list[Evaluation | None]:
        if not self.scorer.has_test():
            return [None] * len(candidates)
        keys = [_key(c) for c in candidates]
        new = {k: c for k, c in zip(keys, candidates) if k not in self._done}
        self._done.update(zip(new, self.scorer.evaluate(list(new.values()), "test")))
        return [self._done[k] for k in keys]

    def values(self, candidates: Sequence[Candidate]) -> list[float | None]:
        return [_value(e) for e in self.of(candidates)]

    def experts(self) -> list[dict]:
        return [e.per_example for e in self.of([expert_mix(self.scorer, k) for k in range(self.scorer.experts)])]

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
