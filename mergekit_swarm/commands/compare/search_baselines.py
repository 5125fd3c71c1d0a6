"""Search methods: the swarm, and baselines given the same number of utility evaluations.

* `random_search`: mixtures drawn from a flat Dirichlet (convex combinations of the experts).
* `lorahub`: LoraHub (Huang et al. 2023): nevergrad's `NGOpt` over one coefficient per expert in
  [-1.5, 1.5], minimising -utility + 0.05 * mean |coefficient|; starts at zero (the base model)
  for LoRA pools, at the uniform soup for full pools (all-zero weights are no model).
* `cma_es`: CMA-ES (the `cma` package) over one weight per layer group and expert, as
  mergekit-evolve's genome: x0 = 1/n, sigma0 = 1/6, weights normalised per group (its
  `linear` merge with `normalize: true`). The last generation is cut to fit the budget.
* `swarm`: our search loop with the recipe's settings at a given granularity.
All three baselines keep the first candidate with the best dev utility they saw.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np

from mergekit_swarm import pso
from mergekit_swarm.commands.compare.baselines import Choice
from mergekit_swarm.commands.compare.scoring import Mix, Scorer
from mergekit_swarm.core import extras
from mergekit_swarm.output.rundir import RunDirectory
from mergekit_swarm.pso import Granularity
from mergekit_swarm.search.loop import run_search, start_swarm
from mergekit_swarm.search.run_state import Checkpoint
from mergekit_swarm.search.selection import select_winner

LORAHUB_BOUND = 1.5
LORAHUB_L1 = 0.05
CMA_SIGMA0 = 1 / 6
_FAILED_LOSS = 1e9  # what optimisers are told for a failed evaluation (they dislike infinities)


class _Best:
    """The first candidate with the highest dev utility seen."""

    def __init__(self):
        self.mix: Mix | None = None
        self.utility = -math.inf

    def offer(self, mix: Mix, utility: float) -> None:
        if utility > self.utility:
            self.mix, self.utility = mix, utility


def random_search(scorer: Scorer, budget: int, seed: int) -> Choice:
    rng = np.random.default_rng(seed)
    mixes = [Mix(rng.dirichlet(np.ones(scorer.experts))[None, :]) for _ in range(budget)]
    best = _Best()
    for mix, result in zip(mixes, scorer.iter_evaluate(mixes)):
        best.offer(mix, result.utility)
    return Choice(best.mix, best.utility, {"distribution": "Dirichlet(1)"})


def lorahub(scorer: Scorer, budget: int, seed: int) -> Choice:
    ng = _package("lorahub")
    n = scorer.experts
    init = np.zeros(n) if scorer.setup.is_lora else np.full(n, 1.0 / n)
    parametrization = ng.p.Array(init=init, lower=-LORAHUB_BOUND, upper=LORAHUB_BOUND)
    parametrization.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.NGOpt(parametrization=parametrization, budget=budget, num_workers=1)
    best, best_loss = _Best(), math.inf
    with _nevergrad_session(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's notes about the sub-optimisers NGOpt picks
        for _ in range(budget):
            point = optimizer.ask()
            mix = Mix(np.asarray(point.value, dtype=np.float64)[None, :])
            utility = scorer.evaluate([mix])[0].utility
            penalty = LORAHUB_L1 * float(np.abs(mix.coefficients).mean())
            loss = (-utility if math.isfinite(utility) else _FAILED_LOSS) + penalty
            optimizer.tell(point, loss)
            if loss < best_loss:  # LoraHub ranks by its regularised loss
                best_loss, best.mix, best.utility = loss, mix, utility
    chosen = getattr(getattr(optimizer, "optim", None), "name", "NGOpt")
    return Choice(best.mix, best.utility, {"optimizer": chosen})


@contextlib.contextmanager
def _nevergrad_session(seed: int):
    """NumPy's global RNG seeded (some of NGOpt's members draw from it: without this, LoraHub's
    result would depend on what ran before), and two workarounds for nevergrad 1.0 on
    NumPy >= 2.4; all undone when LoraHub ends.

    * Its metamodel calls `float()` on a one-element array, which NumPy now refuses (TypeError);
      that error becomes nevergrad's own `MetaModelFailure`, after which NGOpt falls back to its
      base optimiser, as it does whenever the metamodel fails.
    * Its scipy-based members run in non-daemon threads that stop only when the optimiser is
      garbage-collected; threads started here are told to stop at the end, or the interpreter
      would wait for them forever at exit.
    """
    from nevergrad.optimization import metamodel, optimizerlib, recaster

    original = optimizerlib.learn_on_k_best

    def learn_on_k_best(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except TypeError as exc:
            raise metamodel.MetaModelFailure(str(exc)) from exc

    before = set(threading.enumerate())
    optimizerlib.learn_on_k_best = learn_on_k_best
    global_state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(global_state)
        optimizerlib.learn_on_k_best = original
        for thread in set(threading.enumerate()) - before:
            if isinstance(thread, recaster._MessagingThread):
                thread.stop()


def cma_es(scorer: Scorer, budget: int, seed: int) -> Choice:
    cma = _package("cma_es")
    layout = scorer.layout("layer")
    shape = (len(layout), scorer.experts)
    options = {"seed": seed + 1, "verbose": -9}  # cma treats seed 0 as "random"
    es = cma.CMAEvolutionStrategy(np.full(shape[0] * shape[1], 1.0 / shape[1]), CMA_SIGMA0, options)
    best, used = _Best(), 0
    while used < budget:
        points = es.ask()
        taken = points[: budget - used]
        mixes = [Mix(_normalise(np.asarray(x).reshape(shape)), "layer") for x in taken]
        utilities = [e.utility for e in scorer.evaluate(mixes)]
        used += len(taken)
        for mix, utility in zip(mixes, utilities):
            best.offer(mix, utility)
        if len(taken) < len(points):
            break
        es.tell(points, [-u if math.isfinite(u) else _FAILED_LOSS for u in utilities])
    return Choice(best.mix, best.utility, {"groups": shape[0], "popsize": es.popsize, "sigma0": round(CMA_SIGMA0, 4)})


def swarm(scorer: Scorer, settings: pso.SwarmSettings, granularity: Granularity, folder: Path, quiet: bool) -> Choice:
    """Run the swarm at `granularity`; its history and state are kept in `folder`."""
    settings = settings.model_copy(update={"granularity": granularity})
    layout = scorer.layout(granularity)
    rundir = RunDirectory(folder)
    rundir.open("compare", resume=False, overwrite=True)
    evaluator = scorer.mix_evaluator(granularity)
    state, known = start_swarm(settings, evaluator, scorer.experts, layout)
    checkpoint = run_search(settings, evaluator, rundir.state, Checkpoint("compare", state), known=known, quiet=quiet)
    rundir.publish()
    state = checkpoint.state
    selection = select_winner(state, settings, evaluator)
    winner = Mix(selection.coefficients, granularity)
    info = {"granularity": granularity, "groups": len(layout), "particles": state.shape[0], "iterations": state.iteration}
    if checkpoint.examples_in_full:  # racing: the dev examples it scored, and what scoring each evaluation in full would
        info.update(examples_scored=checkpoint.examples_scored, examples_in_full=checkpoint.examples_in_full)
    if not settings.holdout:
        return Choice(winner, selection.utility, info)
    # its dev column is over all of dev, as every other method's: one more evaluation, for the report only
    dev = scorer.evaluate([winner], counted=False)[0].utility
    return Choice(
        winner, dev, {**info, "holdout": settings.holdout, "chosen particle": selection.candidates[selection.chosen].particle}
    )


SEARCH_FUNCTIONS = {"random_search": random_search, "lorahub": lorahub, "cma_es": cma_es}
REQUIRED_PACKAGES = {"lorahub": "nevergrad", "cma_es": "cma"}  # the `compare` extra


def _normalise(weights: np.ndarray) -> np.ndarray:
    """Each group's weights divided by their sum, as mergekit's `normalize: true` (kept when it is ~0)."""
    sums = weights.sum(axis=1, keepdims=True)
    return np.where(np.abs(sums) > 1e-6, weights / np.where(np.abs(sums) > 1e-6, sums, 1.0), weights)


def require(method: str) -> ModuleType | None:
    """The optional package `method` needs (None if it needs none); a clear error if it is missing."""
    return _package(method) if method in REQUIRED_PACKAGES else None


def _package(method: str) -> ModuleType:
    """The optional package of a method that needs one; a clear error if it is missing."""
    return extras.require(REQUIRED_PACKAGES[method], "compare", method)
