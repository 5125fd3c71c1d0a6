"""Utilities on a tiny real model, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mergekit_swarm.core.errors import UtilityError
from mergekit_swarm.utilities import multiple_choice as mc_module
from mergekit_swarm.utilities.data import Example, load_examples
from mergekit_swarm.utilities.exact_match import ExactMatch, contains_answer
from mergekit_swarm.utilities.multiple_choice import MultipleChoice, parse_letter
from mergekit_swarm.utilities.nll import NegativeLoss
from mergekit_swarm.utilities.python import PythonUtility, load_function
from mergekit_swarm.utilities.text import NO_ADAPTERS, GenerationSettings


def generate_one(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Unbatched, unpadded greedy generation: the reference for the batched helper."""
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_exact_match_scores_the_share_of_generations_containing_the_gold(lm, zoo):
    model, tokenizer = lm
    rows = load_examples(zoo.dev)
    generations = [generate_one(model, tokenizer, e.prompt, 6) for e in rows]
    # even rows: gold taken from the model's own output (must match); odd rows: impossible gold
    examples = [
        Example(e.prompt, (g.strip()[:2] or "?") if i % 2 == 0 else "zzzz") for i, (e, g) in enumerate(zip(rows, generations))
    ]
    expected = sum(contains_answer(g, e.answer) for g, e in zip(generations, examples)) / len(examples)
    assert expected == pytest.approx(0.5, abs=1 / len(examples))
    assert ExactMatch(examples, GenerationSettings(max_new_tokens=6, batch_size=5))(model, tokenizer).value == expected


def test_exact_match_normalises_case_and_whitespace():
    assert contains_answer("  The answer:\n  CBA  \n", "cba")
    assert contains_answer("x  y", "X Y")
    assert not contains_answer("cb a", "cba")


def _choice_logprob(model, tokenizer, prompt: str, choice: str) -> float:
    head = tokenizer(prompt)["input_ids"]
    tail = tokenizer(choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(float(logprobs[len(head) - 1 + t, tok]) for t, tok in enumerate(tail))


def test_multiple_choice_by_loglikelihood_matches_a_hand_computation(lm, zoo):
    model, tokenizer = lm
    examples = load_examples(zoo.mc_dev, multiple_choice=True)
    assert [e.answer_index for e in examples] == [i % 2 for i in range(len(examples))]
    picks = [int(np.argmax([_choice_logprob(model, tokenizer, e.prompt, c) for c in e.choices])) for e in examples]
    expected = sum(p == e.answer_index for p, e in zip(picks, examples)) / len(examples)
    utility = MultipleChoice(examples, "loglikelihood", GenerationSettings(4, 3))
    assert utility.predictions(model, tokenizer, NO_ADAPTERS) == [picks]
    assert utility(model, tokenizer).value == expected


def test_multiple_choice_by_generated_letter(monkeypatch):
    assert parse_letter("The answer is B.", 4) == 1
    assert parse_letter("A good answer is C", 4) == 2  # explicit "answer is" beats the article
    assert parse_letter("(D) because", 4) == 3
    assert parse_letter("E then A", 4) == 0  # E is not a valid choice here
    assert parse_letter("no letter here", 4) is None
    assert parse_letter("ABC", 4) is None  # not a standalone letter
    examples = [Example(f"q{i}", "x", ("x", "y", "z"), i % 3) for i in range(4)]
    monkeypatch.setattr(mc_module, "generate_for_adapters", lambda *a, **k: [["A", "Answer: B", "C", "nothing"]])
    # predictions 0, 1, 2, None against gold 0, 1, 2, 0
    assert MultipleChoice(examples, "generate", GenerationSettings(4, 2))(None, None).value == 0.75


def test_multiple_choice_target_delimiter_goes_between_prompt_and_choice(monkeypatch):
    seen = []

    def fake_logprobs(model, tokenizer, pairs, batch_size, adapters):
        seen.extend(pairs)
        return [[(-1.0, 1), (-0.5, 1)]]

    monkeypatch.setattr(mc_module, "logprobs_for_adapters", fake_logprobs)
    example = Example("Q: 2+2=?\nA:", "4", ("3", "4"), 1)
    utility = MultipleChoice([example], "loglikelihood", GenerationSettings(4, 2), target_delimiter=" ")
    assert utility(None, None).value == 1.0
    assert seen == [("Q: 2+2=?\nA:", " 3"), ("Q: 2+2=?\nA:", " 4")]


def test_nll_is_minus_the_token_weighted_mean_answer_loss(lm, zoo):
    model, tokenizer = lm
    examples = load_examples(zoo.dev)
    total, tokens = 0.0, 0
    for e in examples:
        head = tokenizer(e.prompt)["input_ids"]
        tail = tokenizer(e.answer, add_special_tokens=False)["input_ids"]
        labels = torch.tensor([[-100] * len(head) + tail])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([head + tail]), labels=labels).loss
        total, tokens = total + float(loss) * len(tail), tokens + len(tail)
    value = NegativeLoss(examples, batch_size=5)(model, tokenizer)
    assert value < 0
    assert value == pytest.approx(-total / tokens, rel=1e-5)


def test_data_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(UtilityError, match=r"bad.jsonl:2: missing key 'answer'"):
        load_examples(bad)
    bad.write_text('{"prompt": "a", "answer": "b"}\nnot json\n')
    with pytest.raises(UtilityError, match=r"bad.jsonl:2: invalid JSON"):
        load_examples(bad)
    bad.write_text('{"prompt": "a", "choices": ["x", "y"], "answer": "C"}\n')
    with pytest.raises(UtilityError, match=r"bad.jsonl:1: answer 'C' is not a choice index, a letter A-B"):
        load_examples(bad, multiple_choice=True)
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"prompt": "a", "choices": ["x", "y", "z"], "answer": "b"}\n{"prompt": "a", "choices": ["x", "y"], "answer": "y"}\n'
    )
    assert [e.answer_index for e in load_examples(good, multiple_choice=True)] == [1, 1]
    with pytest.raises(UtilityError, match="does not exist"):
        load_examples(tmp_path / "missing.jsonl")


def test_python_utility_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "score.py").write_text(
        "def f(model, tokenizer):\n    return model * 2\n\ndef flag(model, tokenizer):\n    return True\n"
    )
    assert PythonUtility(load_function(f"{tmp_path / 'score.py'}:f"))(21, None) == 42.0
    with pytest.raises(TypeError, match="bool"):
        PythonUtility(load_function(f"{tmp_path / 'score.py'}:flag"))(1, None)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_function("score:f")(1, None) == 2
    with pytest.raises(UtilityError, match="has no function 'nope'"):
        load_function("score:nope")
    with pytest.raises(UtilityError, match="cannot import utility module 'not_a_module_xyz'"):
        load_function("not_a_module_xyz:f")


def test_evaluator_records_failures_instead_of_raising(zoo, resident_factory):
    from mergekit_swarm.search.evaluator import LocalEvaluator
    from mergekit_swarm.weights.kernels import one_hot

    resident = resident_factory(zoo.lora, "model")
    layout = resident.layout

    class Raises:
        def __call__(self, model, tokenizer):
            raise RuntimeError("CUDA out of memory\nsecond line")

    for utility, message in [
        (Raises(), "RuntimeError: CUDA out of memory second line"),
        (lambda m, t: float("nan"), "ValueError: utility returned nan"),
        (lambda m, t: math.inf, "ValueError: utility returned inf"),
    ]:
        result = next(LocalEvaluator(resident, utility).evaluate([one_hot(layout, 3, 0)]))
        assert result.failed and result.utility == -math.inf and result.error == message
    ok = next(LocalEvaluator(resident, lambda m, t: 0.25).evaluate([one_hot(layout, 3, 1)]))
    assert not ok.failed and ok.utility == 0.25 and ok.seconds > 0
