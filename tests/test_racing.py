"""Racing (`swarm.racing: exact`): a particle scored slice by slice of dev stops as soon as its utility
on all of dev can no longer change a decision of the search. Same winner and the same personal, global
best and worst sequence as without racing, for fewer examples scored (counted); stall probes still
choose as without racing; every utility that claims to race really stops early; the others run in full."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from mergekit_swarm.commands.run import RunOptions, run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.pso import SwarmSettings
from mergekit_swarm.search import loop
from mergekit_swarm.search.evaluator import LocalEvaluator, Racing
from mergekit_swarm.utilities import validate_utility
from mergekit_swarm.utilities.race_bounds import mean_bounds
from mergekit_swarm.utilities.racing import (
    GroupedRacer,
    MeanRacer,
    Partial,
    RaceLimit,
    TokenMeanRacer,
    deal_batches,
)
from mergekit_swarm.utilities.score import Score
from tests.helpers import API_KEY, FakeChatCompletions, experts_answers, multitask_of_exact_match_and_nll


def test_slices_are_whole_batches_each_once_in_a_seeded_order():
    plan = deal_batches(10, 4)
    assert sorted(b for s in plan for b in s) == list(range(10)) and len(plan) == 4
    assert plan == deal_batches(10, 4) and plan != [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]
    assert deal_batches(2, 4) == [[b] for b in sorted(deal_batches(2, 4)[0] + deal_batches(2, 4)[1])]


def test_bounds_hold_the_final_utility_at_every_slice():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 40))
        scores = rng.integers(0, 2, n).astype(float)
        final = sum(scores) / n
        for m in range(n + 1):
            low, high = mean_bounds({i: float(scores[i]) for i in range(m)}, n, (0.0, 1.0))
            assert 0.0 <= low <= final <= high <= 1.0
        assert mean_bounds({}, n, (0.0, 1.0)) == (0.0, 1.0)
    assert RaceLimit(best=0.5, worst=0.1).settled(0.2, 0.5)  # at most its best: not an improvement (strict)
    assert not RaceLimit(best=0.5, worst=0.1).settled(0.05, 0.4)  # could become the new worst
    assert not RaceLimit(best=0.5, worst=0.1).settled(0.2, 0.51)


DEV = 48  # examples: 12 batches of 4, in 6 slices


@pytest.fixture(scope="module")
def prompts_48(tmp_path_factory):
    from mergekit_swarm.testing import toy

    path = tmp_path_factory.mktemp("racing") / "prompts.jsonl"
    toy.write_jsonl(path, toy.make_examples(["reverse", "sort", "copy"], DEV, seed=500))
    return path


def _search(recipe_factory, tmp_path, dev, kind: str, racing: str, **swarm) -> tuple:
    utility = {"type": "exact_match", "dev": str(dev), "batch_size": 4, "max_new_tokens": 6}
    settings = {"particles": 6, "max_iterations": 5, "patience": 9, "racing": racing, "racing_slices": 6, **swarm}
    folder = tmp_path / f"{kind}-{racing}-{swarm.get('stall_probes', 'default')}"
    recipe = recipe_factory(kind, swarm=settings, utility=utility, folder=folder / "recipe")
    result = run_swarm(load_recipe(recipe), folder / "out", RunOptions(quiet=True))
    history = [json.loads(line) for line in (folder / "out" / "swarm_history.jsonl").read_text().splitlines()]
    return result, history


def _bests(history: list[dict]) -> list[tuple]:
    """After each iteration: every particle's personal best and the global best, from full-dev utilities only."""
    personal: dict[int, float] = {}
    trace = []
    for iteration in sorted({r["iteration"] for r in history}):
        for record in history:
            if record["iteration"] == iteration and record["utility"] is not None:
                personal[record["particle"]] = max(personal.get(record["particle"], -math.inf), record["utility"])
        trace.append((iteration, sorted(personal.items()), max(personal.values())))
    return trace


def _utilities(history: list[dict]) -> dict[tuple, float]:
    return {(r["iteration"], r["particle"]): r["utility"] for r in history if r["utility"] is not None}


@pytest.mark.parametrize("kind, probes", [("lora", 0.0), ("lora", 0.5), ("full", 0.5)])
def test_exact_racing_gives_the_same_search_for_fewer_examples(
    recipe_factory, zoo, tokenizer, tmp_path, prompts_48, kind, probes
):
    dev = experts_answers(zoo, kind, tokenizer, tmp_path, prompts_48, favourite=0.5)  # utilities up to ~0.8
    off, off_history = _search(recipe_factory, tmp_path, dev, kind, "off", stall_probes=probes)
    exact, exact_history = _search(recipe_factory, tmp_path, dev, kind, "exact", stall_probes=probes)
    assert exact.coefficients == off.coefficients and exact.winner_dev == off.winner_dev
    assert exact.iterations == off.iterations and exact.probes == off.probes and exact.restarts == off.restarts
    assert _bests(exact_history) == _bests(off_history)
    full = _utilities(exact_history)  # the evaluations not stopped, and those finished: their full-dev utilities
    assert full == {key: value for key, value in _utilities(off_history).items() if key in full}
    stopped = [r for r in exact_history if "stopped" in r]
    finished = [r for r in exact_history if "finished_from" in r]  # stopped, then scored to the end for a probe step
    assert off.racing is None and exact.racing is not None
    assert exact.racing["stopped"] == len(stopped) and len(stopped) + len(finished) > 0  # it really stopped particles
    assert exact.racing["finished_for_probes"] == len(finished)
    for record in finished:  # its second line: the rest of dev, after the line it was stopped on
        first = next(r for r in stopped if (r["iteration"], r["particle"]) == (record["iteration"], record["particle"]))
        assert record["finished_from"] == first["examples"] and first["examples"] + record["examples"] == DEV
    if probes == 0:
        assert not finished
    assert exact.racing["examples_scored"] == sum(r["examples"] for r in exact_history)
    assert exact.racing["examples_in_full"] == (len(exact_history) - len(finished)) * DEV
    assert (exact.racing["examples_scored"] < exact.racing["examples_in_full"]) == (len(stopped) > len(finished))
    assert len({r["utility"] for r in off_history}) > 2  # the particles really differ
    for record in stopped:  # its true utility lies within the bounds it was stopped with
        twin = next(r for r in off_history if (r["iteration"], r["particle"]) == (record["iteration"], record["particle"]))
        assert record["stopped"]["low"] <= twin["utility"] <= record["stopped"]["high"]
        assert record["examples"] < record["stopped"]["of"] == DEV


def _racing_utilities(zoo, prompts_file=None):
    generation = {"dev": str(zoo.dev), "batch_size": 4, "max_new_tokens": 6}
    configs = {
        "exact_match": {"type": "exact_match", **generation},
        "multiple_choice (generate)": {"type": "multiple_choice", "dev": str(zoo.mc_dev), "parse": "generate", "batch_size": 4},
        # its batches are of (prompt, choice) pairs: an example is judged once all its choices are in
        "multiple_choice (loglikelihood)": {"type": "multiple_choice", "dev": str(zoo.mc_dev), "batch_size": 5},
        "multitask": {
            "type": "multitask",
            "components": [
                {"name": "em", "utility": {"type": "exact_match", **generation}},
                {"name": "mc", "utility": {"type": "multiple_choice", "dev": str(zoo.mc_dev), "parse": "generate"}},
            ],
        },
    }
    return {name: validate_utility(config).build("dev") for name, config in configs.items()}


@pytest.mark.parametrize("slots", [1, 3])
def test_every_racing_utility_stops_early_and_finishes_to_its_full_value(zoo, resident_factory, slots):
    resident = resident_factory(zoo.lora, "model", slots=slots)
    rng = np.random.default_rng(3)
    particles = [np.eye(3)[[k]] for k in range(3)] + [rng.dirichlet(np.ones(3))[None] * 1.4 - 0.1 for _ in range(2)]
    for name, utility in _racing_utilities(zoo).items():
        full = list(LocalEvaluator(resident, utility).evaluate(particles))
        engine = LocalEvaluator(resident, utility)
        always = Racing(3, [RaceLimit(best=2.0, worst=-1.0)] * len(particles))  # settled by any bounds: stop at once
        raced = list(engine.evaluate(particles, racing=always))
        assert all(e.stopped is not None and e.examples < e.of for e in raced), name
        assert all(e.stopped[0] <= f.utility <= e.stopped[1] for e, f in zip(raced, full)), name
        finished = engine.finish(particles, raced)
        assert [e.utility for e in finished] == [e.utility for e in full], name
        assert [e.details for e in finished] == [e.details for e in full], name
        assert [e.per_example for e in finished] == [e.per_example for e in full], name
        assert all(e.examples == e.of and e.stopped is None for e in finished), name
        never = Racing(3, [None] * len(particles))  # counted, never stopped: the full values
        counted = list(LocalEvaluator(resident, utility).evaluate(particles, racing=never))
        assert [e.utility for e in counted] == [e.utility for e in full], name


def test_utilities_without_exact_bounds_are_scored_in_full_under_exact_racing(zoo, resident_factory, caplog):
    resident = resident_factory(zoo.lora, "model")
    generation = {"dev": str(zoo.dev), "batch_size": 4, "max_new_tokens": 6}
    for config, why in (
        ({"type": "nll", "dev": str(zoo.dev)}, "`racing: confident` races it"),
        (multitask_of_exact_match_and_nll(zoo, generation), "every component races"),
    ):
        utility = validate_utility(config).build("dev")
        assert utility.racer(resident.tokenizer, 4) is None
        engine = LocalEvaluator(resident, utility)
        caplog.clear()
        with caplog.at_level("WARNING"):
            results = list(engine.evaluate([np.eye(3)[[0]]], racing=Racing(4, [RaceLimit(2.0, -1.0)])))
        assert results[0].stopped is None and results[0].examples is None
        assert "does not race here" in caplog.text and why in caplog.text


def _confident_only_utilities(zoo, prompts, reward_model_dir, judge_url: str) -> dict:
    judge = {"type": "openai", "base_url": judge_url, "model": "judge-1", "api_key_env": "JUDGE_KEY"}
    configs = {
        "nll": {"type": "nll", "dev": str(zoo.dev), "batch_size": 4},
        "multitask of nll": multitask_of_exact_match_and_nll(zoo, {"dev": str(zoo.dev), "batch_size": 4, "max_new_tokens": 6}),
        "reward_model": {
            "type": "reward_model",
            "model": str(reward_model_dir),
            "dev": str(prompts),
            "max_new_tokens": 6,
            "batch_size": 3,
            "normalize": {"low": -0.2, "high": 0.2},
            "length_penalty": "verbose",
        },
        "judge": {"type": "judge", "dev": str(prompts), "max_new_tokens": 6, "template": "Q: {prompt} A: {response}"}
        | {"backend": judge},
    }
    return {name: validate_utility(config).build("dev") for name, config in configs.items()}


def test_confident_racing_stops_nll_reward_and_judge_early_and_finishes_them(
    zoo, resident_factory, prompts, reward_model_dir, monkeypatch
):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    resident = resident_factory(zoo.lora, "model", slots=3)
    rng = np.random.default_rng(4)
    particles = [np.eye(3)[[k]] for k in range(3)] + [rng.dirichlet(np.ones(3))[None] * 1.4 - 0.1]
    with FakeChatCompletions() as server:  # rates a response 1 + its length: ratings that differ
        for name, utility in _confident_only_utilities(zoo, prompts, reward_model_dir, server.base_url).items():
            assert utility.racer(resident.tokenizer, 3) is None, name  # exact: no bound would hold
            full = list(LocalEvaluator(resident, utility).evaluate(particles))  # racing off
            assert len({e.utility for e in full}) > 1, name  # the particles really differ
            engine = LocalEvaluator(resident, utility)
            always = Racing(3, [RaceLimit(best=2.0, worst=-1e9)] * len(particles), z=1.0)  # settled at the first look
            raced = list(engine.evaluate(particles, racing=always))
            assert all(e.stopped is not None and e.examples < e.of for e in raced), name
            finished = engine.finish(particles, raced)
            assert all(e.examples == e.of and e.stopped is None for e in finished), name
            # every evaluation of a confident run is scored in the same slices: the same values, stopped or not
            never = Racing(3, [None] * len(particles), z=1.0)
            counted = list(LocalEvaluator(resident, utility).evaluate(particles, racing=never))
            assert [e.utility for e in finished] == [e.utility for e in counted], name
            # and, batched otherwise, racing off's up to float rounding
            assert [e.utility for e in finished] == pytest.approx([e.utility for e in full], rel=1e-5, abs=1e-6), name


def test_token_mean_bounds_are_exact_above_and_estimated_below():
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, 6, 200).tolist()
    sums = [-float(rng.gamma(2.0, 0.5)) * t for t in tokens]  # log-likelihoods: at most 0
    final = sum(sums) / sum(tokens)
    racer = TokenMeanRacer(tokens, [[tuple(range(200))]], lambda *args: [], lambda s: Score(sum(s) / sum(tokens)))
    order = rng.permutation(200).tolist()
    covered, widths = 0, []
    for m in (10, 25, 50, 100, 150):
        known = Partial({"": {i: sums[i] for i in order[:m]}})
        low, high = racer.bounds(known, z=2.0)
        assert final <= high <= racer.bounds(known)[1] <= 0.0  # the unscored tokens add at most 0
        assert racer.bounds(known)[0] == -math.inf  # exact: no floor, so exact racing never stops it
        covered += low <= final
        widths.append(high - low)
    assert covered >= 4 and widths[-1] < widths[0] / 3
    low, high = racer.bounds(Partial({"": dict(enumerate(sums))}), z=2.0)
    assert low <= final <= high and high - low < 1e-12
    assert racer.result(Partial({"": dict(enumerate(sums))})).value == final


def test_multiple_choice_by_loglikelihood_races_in_pairs_and_judges_whole_examples(zoo, tokenizer):
    utility = validate_utility({"type": "multiple_choice", "dev": str(zoo.mc_dev), "batch_size": 5}).build("dev")
    pairs = sum(len(e.choices) for e in utility.examples)
    for whole_batches in (True, False):
        racer = utility.racer(tokenizer, 3, whole_batches)
        assert isinstance(racer, GroupedRacer) and racer.examples == pairs  # racing counts the pairs scored
        units = [u for index in range(racer.slices) for batch in racer._plan[index] for u in batch]
        assert sorted(units) == list(range(pairs))  # every pair once
        if not whole_batches:  # confident: each slice holds whole examples, a random sample of them
            for index in range(racer.slices):
                held = {u for batch in racer._plan[index] for u in batch}
                assert all(set(g) <= held or not set(g) & held for g in racer.groups)
    racer = utility.racer(tokenizer, 3)
    assert racer is not None
    first = {0: -1.0}  # one of example 0's choices: not judged yet
    assert racer.bounds(Partial({"": first})) == mean_bounds({}, len(racer.groups), (0.0, 1.0))
    choices = len(racer.groups[0])
    answer = utility.examples[0].answer_index
    complete = {u: (0.0 if u == answer else -5.0) for u in range(choices)}  # its answer the most likely: right
    low, high = racer.bounds(Partial({"": complete}))
    assert low == pytest.approx(1 / len(racer.groups)) and high == 1.0


def test_racing_with_evaluation_dropout_is_refused():
    with pytest.raises(ValueError, match="racing needs drop_k: 0"):
        SwarmSettings(racing="exact", drop_k=1, drop_n=4)
    assert SwarmSettings(racing="exact").racing_slices == 4
    assert isinstance(ConfigError("x"), Exception) and Partial().count() == 0 and MeanRacer.__abstractmethods__ == frozenset()


def test_confident_racing_ranks_its_stops_for_stall_probes_without_finishing_them(
    recipe_factory, zoo, tokenizer, tmp_path, prompts_48, monkeypatch
):
    from mergekit_swarm.pso import engine

    ranked = []  # (iteration, each particle's utility) as the probes rank them
    probe = engine._probe_near_global_best

    def spy(state, settings):
        ranked.append((state.iteration, state.utilities.copy()))
        probe(state, settings)

    monkeypatch.setattr(engine, "_probe_near_global_best", spy)
    dev = experts_answers(zoo, "lora", tokenizer, tmp_path, prompts_48, favourite=0.5)
    confident, history = _search(recipe_factory, tmp_path, dev, "lora", "confident", stall_probes=0.5, racing_confidence=0.9)
    assert confident.probes > 0 and not any("finished_from" in r for r in history)
    assert confident.racing["finished_for_probes"] == 0
    assert confident.racing["examples_scored"] == sum(r["examples"] for r in history)
    checked = 0
    for iteration, utilities in ranked:  # a stopped particle is ranked by the middle of its interval
        for r in history:
            if r["iteration"] == iteration and "stopped" in r:
                assert utilities[r["particle"]] == (r["stopped"]["low"] + r["stopped"]["high"]) / 2
                checked += 1
            elif r["iteration"] == iteration:
                assert utilities[r["particle"]] == r["utility"]
    assert checked > 0  # stops came before probe steps: the path without finishing really ran


def test_confident_racing_stops_far_more_than_exact(recipe_factory, zoo, tokenizer, tmp_path, prompts_48):
    dev = experts_answers(zoo, "lora", tokenizer, tmp_path, prompts_48, favourite=0.5)
    exact, _ = _search(recipe_factory, tmp_path, dev, "lora", "exact", stall_probes=0.0)
    confident, history = _search(recipe_factory, tmp_path, dev, "lora", "confident", stall_probes=0.0, racing_confidence=0.9)
    assert confident.racing["saved"] > 2 * exact.racing["saved"] and confident.racing["stopped"] > exact.racing["stopped"]
    assert all(r["stopped"]["high"] <= 1.0 for r in history if "stopped" in r)


def test_finishing_goes_on_from_where_each_particle_stopped(zoo, resident_factory):
    from mergekit_swarm.search.evaluator import Evaluation
    from mergekit_swarm.utilities.text import NO_ADAPTERS

    resident = resident_factory(zoo.lora, "model", slots=3)
    utility = _racing_utilities(zoo)["exact_match"]
    particles = [np.eye(3)[[k]] for k in range(3)]
    engine = LocalEvaluator(resident, utility)
    full = list(engine.evaluate(particles, racing=Racing(3, [None] * 3)))  # counted, in full
    racer = utility.racer(resident.tokenizer, 3)
    assert racer is not None and racer.slices == 3
    stopped = []
    for k, particle in enumerate(particles):  # stopped after 2, 1 and 2 slices
        partial = Partial()
        resident.load(particle)
        for index in range(2 - k % 2):
            partial.add("", racer.score_slice(resident.model, resident.tokenizer, NO_ADAPTERS, index)[0][""])
            partial.slices = index + 1
        stopped.append(Evaluation(1.0, 0.0, examples=partial.count(), of=racer.examples, stopped=(0.0, 1.0), partial=partial))
    assert sorted({e.partial.slices for e in stopped}) == [1, 2]
    finished = engine.finish(particles, stopped)
    assert [e.utility for e in finished] == [e.utility for e in full]
    assert [e.per_example for e in finished] == [e.per_example for e in full]
    assert [e.finished_from for e in finished] == [e.examples for e in stopped]

    def fails(*args, **kwargs):
        raise RuntimeError("a slice that cannot be scored")

    engine._racers["dev"].score_slice = fails  # finishing falls back to scoring each particle on all of dev
    again = engine.finish(particles, [replace(e, partial=e.partial.copy()) for e in stopped])
    assert [e.utility for e in again] == [e.utility for e in full]
    # all of dev again, on top of what was scored before the stop (the history's second line: the whole of dev)
    assert [e.examples - e.finished_from for e in again] == [racer.examples] * 3
    assert [e.finished_from for e in again] == [e.examples for e in stopped]


@pytest.mark.parametrize("racing", ["exact", "confident"])
def test_an_interrupted_racing_run_resumes_to_the_same_winner_and_history(
    recipe_factory, zoo, tokenizer, tmp_path, prompts_48, monkeypatch, racing
):
    """`confident` on nll: each particle is compared with its personal best example by example, whose
    scores the checkpoint keeps (a resumed run pairs against the same ones)."""
    dev = experts_answers(zoo, "lora", tokenizer, tmp_path, prompts_48, favourite=0.5)
    if racing == "exact":
        utility = {"type": "exact_match", "dev": str(dev), "batch_size": 4, "max_new_tokens": 6}
    else:
        utility = {"type": "nll", "dev": str(dev), "batch_size": 4}
    swarm = {"particles": 6, "max_iterations": 5, "patience": 9, "racing": racing, "racing_slices": 6}
    recipe = load_recipe(recipe_factory("lora", swarm=swarm, utility=utility, folder=tmp_path / "recipe"))
    paired = []  # (bounds paired with the personal best, the particle's own bounds)
    token_bounds = TokenMeanRacer.bounds

    def spy(racer, partial, z=None, with_best=None):
        if with_best is not None:
            paired.append((token_bounds(racer, partial, z, with_best), token_bounds(racer, partial, z)))
        return token_bounds(racer, partial, z, with_best)

    keep = loop._keep_best_scores
    kept_after = []  # per iteration: each kept particle's summed scores over its personal best

    def checked(settings, checkpoint, results, bests):
        keep(settings, checkpoint, results, bests)
        kept = checkpoint.best_scores or {}
        kept_after.append([math.fsum(kept[i][""]) / checkpoint.state.best_utilities[i] for i in sorted(kept)])

    with monkeypatch.context() as patched:
        patched.setattr(TokenMeanRacer, "bounds", spy)
        patched.setattr(loop, "_keep_best_scores", checked)
        whole = run_swarm(recipe, tmp_path / "whole", RunOptions(quiet=True))
    if racing == "confident":  # the kept scores were paired with, and changed the intervals
        assert paired and any(p != alone for p, alone in paired)
        # and are always the current personal best's: summed, they give its utility times dev's token count
        assert all(len(ratios) == 6 and ratios == pytest.approx([ratios[0]] * 6, rel=1e-9) for ratios in kept_after)

    calls = {"n": 0}
    race = LocalEvaluator._race_group

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # past iteration 0 (particles are scored in groups of up to the resident's slots)
            raise KeyboardInterrupt
        yield from race(self, *args, **kwargs)

    monkeypatch.setattr(LocalEvaluator, "_race_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_swarm(recipe, tmp_path / "out", RunOptions(quiet=True))
    monkeypatch.undo()
    saved = json.loads((tmp_path / ".out.partial" / "swarm_state.json").read_text())
    assert saved["state"]["iteration"] >= 1 and saved["examples_scored"] > 0  # resumed from a checkpoint mid-search
    if racing == "confident":  # every particle's personal best, scored on all of dev
        assert sorted(saved["best_scores"]) == [str(i) for i in range(6)]
        assert all(len(kept[""]) == DEV for kept in saved["best_scores"].values())
    else:
        assert "best_scores" not in saved
    resumed = run_swarm(recipe, tmp_path / "out", RunOptions(quiet=True, resume=True))

    def lines(folder):
        rows = (folder / "swarm_history.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(row).items() if k != "wall_time"} for row in rows]

    assert resumed.coefficients == whole.coefficients and resumed.racing == whole.racing
    assert lines(tmp_path / "out") == lines(tmp_path / "whole") and whole.racing["stopped"] > 0


def test_compare_races_its_swarm_and_charges_search_baselines_in_examples(recipe_factory, zoo, tokenizer, tmp_path, prompts_48):
    """In `compare`, the swarm races as in a run (same choice as racing off), and the search baselines, which
    score all of dev every time, get as many whole evaluations as the dev examples the swarm scored."""
    from mergekit_swarm.commands.compare import CompareOptions, run_comparison

    dev = experts_answers(zoo, "lora", tokenizer, tmp_path, prompts_48, favourite=0.5)
    boards = {}
    for racing in ("off", "exact"):
        utility = {"type": "exact_match", "dev": str(dev), "batch_size": 4, "max_new_tokens": 6}
        swarm = {"particles": 6, "max_iterations": 5, "patience": 9, "racing": racing, "racing_slices": 6, "stall_probes": 0.0}
        recipe = recipe_factory("lora", swarm=swarm, utility=utility, folder=tmp_path / f"compare-{racing}")
        out = tmp_path / f"board-{racing}"
        boards[racing] = run_comparison(
            load_recipe(recipe), out, RunOptions(quiet=True), CompareOptions(baselines=(), search=("random_search",))
        )
    off, exact = (boards[r].entry("swarm_model") for r in ("off", "exact"))
    assert (exact.dev, exact.evaluations, exact.settings["iterations"]) == (off.dev, off.evaluations, off.settings["iterations"])
    scored, in_full = exact.settings["examples_scored"], exact.settings["examples_in_full"]
    assert scored < in_full == exact.evaluations * DEV and "examples_scored" not in off.settings
    assert boards["off"].budget == off.evaluations
    assert boards["exact"].budget == round(exact.evaluations * scored / in_full)  # (exact saves little here: 1%)
    assert boards["exact"].entry("random_search").evaluations == boards["exact"].budget
    assert f"the {scored} dev examples the racing swarm scored" in boards["exact"].markdown()
