"""The utilities that models score (`utilities/`): reward model, LLM judge (local and HTTP), lm-eval
tasks, multi-task aggregation; all on tiny local models, with values checked by hand. (Exact match,
NLL, multiple choice and data files: test_utilities.py.)"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable

import pytest
import torch
from click.testing import CliRunner

from mergekit_swarm.cli import main
from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import UtilityError
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.testing import toy
from mergekit_swarm.utilities import validate_utility
from mergekit_swarm.utilities.data import load_examples
from mergekit_swarm.utilities.exact_match import ExactMatch
from mergekit_swarm.utilities.judge import parse_rating
from mergekit_swarm.utilities.judge_backends import JudgeError, JudgeUnreachable, OpenAIJudge, OpenAIJudgeConfig
from mergekit_swarm.utilities.multitask import aggregate
from mergekit_swarm.utilities.text import GenerationSettings, greedy_generate
from tests.helpers import API_KEY, FakeChatCompletions, write_recipe


# ------------------------------------------------------------------ reward model
def rm_rewards_one_by_one(path, texts: list[str]) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    with torch.no_grad():
        return [float(model(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in texts]


def test_reward_model_scores_match_unbatched_rewards_and_normalise_to_unit_range(lm, prompts, reward_model_dir):
    model, tokenizer = lm
    texts_prompts = [e.prompt for e in load_examples(prompts, answers=False)]
    responses = greedy_generate(model, tokenizer, texts_prompts, GenerationSettings(6, 8))
    raw = rm_rewards_one_by_one(reward_model_dir, [p + r for p, r in zip(texts_prompts, responses)])
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses]
    assert max(raw) - min(raw) > 1e-4  # responses really differ

    base = {"type": "reward_model", "model": str(reward_model_dir), "dev": str(prompts), "max_new_tokens": 6, "batch_size": 3}
    plain = validate_utility(base).build("dev")(model, tokenizer)
    assert plain.value == pytest.approx(sum(raw) / len(raw), abs=1e-5)  # padded batches read the last real token
    assert plain.details["response_tokens"] == pytest.approx(sum(lengths) / len(lengths))

    low, high = sorted(raw)[1], sorted(raw)[-2]  # some rewards fall outside: clipped
    normalized = validate_utility({**base, "normalize": {"low": low, "high": high}}).build("dev")(model, tokenizer)
    expected = [min(1.0, max(0.0, (r - low) / (high - low))) for r in raw]
    assert normalized.value == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    assert 0.0 < normalized.value < 1.0

    concise = validate_utility(
        {**base, "normalize": {"low": low, "high": high}, "length_penalty": "concise", "length_weight": 0.5}
    ).build("dev")(model, tokenizer)
    penalty = sum(0.5 * min(1.0, n / 6) for n in lengths) / len(lengths)
    assert concise.value == pytest.approx(normalized.value - penalty, abs=1e-5)
    verbose = validate_utility(
        {**base, "normalize": {"low": low, "high": high}, "length_penalty": "verbose", "length_weight": 0.5}
    ).build("dev")(model, tokenizer)
    assert verbose.value == pytest.approx(normalized.value + penalty, abs=1e-5)


def test_reward_model_config_errors(reward_model_dir, prompts):
    with pytest.raises(ValueError, match="high .* must be larger than low"):
        validate_utility(
            {"type": "reward_model", "model": str(reward_model_dir), "dev": str(prompts), "normalize": {"low": 1.0, "high": 0.0}}
        )
    with pytest.raises(UtilityError, match="has no chat template"):
        validate_utility(
            {"type": "reward_model", "model": str(reward_model_dir), "dev": str(prompts), "chat_template": True}
        ).build("dev")


# ------------------------------------------------------------------ judge
def test_rating_parser():
    assert parse_rating("The answer is fine. Rating: 7/10") == 7.0
    assert parse_rating("rating: [[9]]") == 9.0
    assert parse_rating("**Rating:** 8") == 8.0
    assert parse_rating("Rating: 12/10") == 10.0 and parse_rating("Rating: 0") == 1.0
    assert parse_rating("I would give it a seven") is None
    assert parse_rating("**Rating**: 7/10") == 7.0 and parse_rating("rating (6)") == 6.0


def judge_utility(prompts, base_url: str, **backend):
    config = {
        "type": "judge",
        "dev": str(prompts),
        "max_new_tokens": 6,
        "template": "Q: {prompt}\nA: {response}",
        "backend": {"type": "openai", "base_url": base_url, "model": "judge-1", "api_key_env": "JUDGE_KEY", **backend},
    }
    return validate_utility(config).build("dev")


def test_http_judge_scores_with_bounded_concurrency(lm, prompts, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    model, tokenizer = lm
    texts = [e.prompt for e in load_examples(prompts, answers=False)]
    responses = greedy_generate(model, tokenizer, texts, GenerationSettings(6, 32))
    ratings = [min(10, 1 + len(r)) for r in responses]
    with FakeChatCompletions() as server:
        score = judge_utility(prompts, server.base_url, concurrency=2)(model, tokenizer)
    assert score.value == pytest.approx(sum(ratings) / len(ratings) / 10)
    assert score.details == {"mean_rating": pytest.approx(sum(ratings) / len(ratings)), "unparseable": 0.0}
    assert len(server.requests) == len(texts) and 1 < server.max_in_flight <= 2
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == f"Bearer {API_KEY}"
    assert first["body"]["model"] == "judge-1" and first["body"]["temperature"] == 0


def test_http_judge_retries_with_backoff_then_gives_up(lm, prompts, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    model, tokenizer = lm
    with FakeChatCompletions(fail_first=2) as server:
        score = judge_utility(prompts, server.base_url, concurrency=1, retries=2, backoff=0.01)(model, tokenizer)
    assert score.details["unparseable"] == 0 and len(server.requests) == 8 + 2  # two 503s, retried
    with FakeChatCompletions(fail_first=100) as server:
        with pytest.raises(JudgeError, match=r"no answer after 3 attempts \(HTTP 503\)"):
            OpenAIJudge(OpenAIJudgeConfig(base_url=server.base_url, model="m", api_key_env="JUDGE_KEY", retries=2, backoff=0.01))(
                ["Q: x\nA: y"]
            )
        assert len(server.requests) == 3


def test_http_judge_timeouts_back_off_and_redirects_are_refused(monkeypatch):
    import time

    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    with FakeChatCompletions(delay=1.0) as server:
        judge = OpenAIJudge(
            OpenAIJudgeConfig(base_url=server.base_url, model="m", api_key_env="JUDGE_KEY", timeout=0.2, retries=2, backoff=0.3)
        )
        start = time.perf_counter()
        with pytest.raises(JudgeError, match=r"no answer after 3 attempts \(TimeoutError"):
            judge(["Q: x\nA: y"])
        assert time.perf_counter() - start >= 3 * 0.2 + 0.3 + 0.6  # three timeouts, backoff 0.3 s then 0.6 s
    with FakeChatCompletions(mode="redirect") as server:
        judge = OpenAIJudge(OpenAIJudgeConfig(base_url=server.base_url, model="m", api_key_env="JUDGE_KEY"))
        with pytest.raises(JudgeError, match="HTTP 307 redirect refused"):
            judge(["Q: x\nA: y"])
        assert len(server.requests) == 1  # nothing followed the redirect (with our key)
    with FakeChatCompletions(mode="null") as server:
        assert OpenAIJudge(OpenAIJudgeConfig(base_url=server.base_url, model="m", api_key_env="JUDGE_KEY"))(["Q: x\nA: y"]) == [
            ""
        ]


def test_judge_template_placeholders_and_braces_in_prompts(prompts, monkeypatch):
    import mergekit_swarm.utilities.judge as judge_module
    from mergekit_swarm.utilities.data import Example

    with pytest.raises(ValueError, match="exactly the {prompt} and {response} placeholders"):
        validate_utility(
            {
                "type": "judge",
                "dev": str(prompts),
                "template": "{{prompt}} {response}",
                "backend": {"type": "openai", "base_url": "http://127.0.0.1:9", "model": "m"},
            }
        )
    # the policy answers with braces, the prompt has braces: neither is read as a placeholder
    monkeypatch.setattr(
        judge_module, "generate_for_adapters", lambda model, tokenizer, prompts, settings, adapters: [["{}}"] * len(prompts)]
    )
    monkeypatch.setattr(judge_module, "model_device", lambda model: None)
    seen = []

    def judge(questions, device=None):
        seen.extend(questions)
        return ["Rating: 4"] * len(questions)

    utility = judge_module.JudgeUtility(
        [Example("say {x} and {", "")], GenerationSettings(2, 4), "Q: {prompt}\nA: {response}", judge
    )
    assert utility(None, None).value == 0.4
    assert seen == ["Q: say {x} and {\nA: {}}"]


def test_http_judge_auth_failure_names_the_variable_not_the_key(prompts, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "wrong-key-value")
    with FakeChatCompletions() as server:
        judge = OpenAIJudge(OpenAIJudgeConfig(base_url=server.base_url, model="m", api_key_env="JUDGE_KEY"))
        with pytest.raises(JudgeError) as err:
            judge(["Q: x\nA: y"])
    assert "HTTP 401, not authorised with the key in $JUDGE_KEY" in str(err.value)
    assert "wrong-key-value" not in str(err.value)
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(UtilityError, match="environment variable JUDGE_KEY .* is not set"):
        OpenAIJudge(OpenAIJudgeConfig(base_url="http://127.0.0.1:9", model="m", api_key_env="JUDGE_KEY"))


class SilentEndpoint:
    """A TCP listener on 127.0.0.1 that never answers: the n-th connection (from 1) is held open
    unanswered when `hang(n)`, otherwise closed at once. `connections` counts them (all of them
    once the `with` block is left); `hung_up[i]` is set when the client closes the i-th held one
    (the server never does)."""

    def __init__(self, hang: Callable[[int], bool] = lambda n: True):
        self.hang, self.connections, self.hung_up = hang, 0, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # so that the accept loop sees `closing`
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self._take(conn)
        self.listener.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # count the connections a busy machine left waiting
            while True:
                self._take(self.listener.accept()[0])

    def _take(self, conn: socket.socket):
        self.connections += 1
        if self.hang(self.connections):
            self.hung_up.append(threading.Event())
            threading.Thread(target=self._hold, args=(conn, self.hung_up[-1]), daemon=True).start()
        else:
            conn.close()

    def _hold(self, conn: socket.socket, hung_up: threading.Event):
        with conn:
            while not self.closing.is_set():
                try:
                    if not conn.recv(65536):
                        break
                except OSError:
                    break
            hung_up.set()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closing.set()
        self.thread.join()
        self.listener.close()


def http_judge(base_url: str, **settings) -> OpenAIJudge:
    return OpenAIJudge(OpenAIJudgeConfig(base_url=base_url, model="m", api_key_env="JUDGE_KEY", **settings))


def test_http_judge_breaker_stops_at_a_silent_endpoint_after_a_few_attempts(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    with SilentEndpoint() as endpoint:
        # without the breaker: 5 requests x 11 attempts, each waiting for its timeout
        judge = http_judge(endpoint.base_url, concurrency=1, timeout=0.2, retries=10, backoff=0, max_consecutive_failures=3)
        with pytest.raises(JudgeUnreachable) as err:
            judge(["Q: x\nA: y"] * 5)
    assert endpoint.connections == 3
    message = str(err.value)
    assert message.startswith(
        f"judge endpoint {endpoint.base_url}/chat/completions is down: 3 attempts in a row failed (last: TimeoutError"
    )
    assert "\n" not in message and "--resume" in message and "max_consecutive_failures" in message
    assert API_KEY not in message and isinstance(err.value, UtilityError)  # a SwarmError: the CLI's one line


def test_http_judge_breaker_cuts_requests_in_flight_and_starts_no_queued_one(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    raised = []

    def judge_all(judge):
        try:
            judge(["Q: x\nA: y"] * 6)
        except Exception as exc:
            raised.append(exc)

    # the first connection is held unanswered (for up to `timeout`, 600 s), every other one is closed at once
    with SilentEndpoint(hang=lambda n: n == 1) as endpoint:
        judge = http_judge(endpoint.base_url, concurrency=2, timeout=600, retries=5, backoff=0, max_consecutive_failures=2)
        caller = threading.Thread(target=judge_all, args=(judge,), daemon=True)
        caller.start()
        caller.join(120)  # a guard against a hang (the held request waiting its 600 s), not a timing
        assert not caller.is_alive(), "the request in flight was not cut when the breaker tripped"
        # one held request and two closed ones from the other worker: then the breaker trips, the
        # held connection is shut down by the client and the 4 queued prompts are never sent
        assert endpoint.hung_up[0].wait(30)
    assert endpoint.connections == 3
    assert len(raised) == 1 and isinstance(raised[0], JudgeUnreachable)
    assert "2 attempts in a row failed" in str(raised[0])


def test_http_judge_breaker_counts_failures_in_a_row_only(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    # 4 x 503, an answer, 4 connections closed unanswered, answers: 8 failures, never 5 in a row
    with FakeChatCompletions(fail_first=4, drop=range(6, 10), delay=0) as server:
        judge = http_judge(server.base_url, concurrency=1, retries=4, backoff=0.01, max_consecutive_failures=5)
        assert judge(["Q: x\nA: ab"] * 3) == ["Looks fine. Rating: 3/10"] * 3
        assert len(server.requests) == 4 + 1 + 4 + 1 + 1
    with FakeChatCompletions(fail_first=100, delay=0) as server:  # a 503 counts: the breaker trips at the 5th
        with pytest.raises(JudgeUnreachable, match=r"5 attempts in a row failed \(last: HTTP 503\)"):
            http_judge(server.base_url, concurrency=1, retries=10, backoff=0.01)(["Q: x\nA: y"] * 3)
        assert len(server.requests) == 5
    with FakeChatCompletions(fail_first=100, delay=0) as server:  # 0: never; each request gives up on its own
        with pytest.raises(JudgeError, match=r"no answer after 7 attempts \(HTTP 503\)"):
            http_judge(server.base_url, concurrency=1, retries=6, backoff=0, max_consecutive_failures=0)(["Q: x\nA: y"])
        assert len(server.requests) == 7


def test_a_dead_judge_endpoint_stops_the_run_with_one_line(zoo, prompts, recipe_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    with SilentEndpoint() as endpoint:
        backend = {"type": "openai", "base_url": endpoint.base_url, "model": "j", "api_key_env": "JUDGE_KEY"}
        backend |= {"concurrency": 2, "timeout": 0.2, "retries": 10, "backoff": 0, "max_consecutive_failures": 3}
        utility = {"type": "judge", "dev": str(prompts), "max_new_tokens": 4, "template": "Q: {prompt}\nA: {response}"}
        recipe = recipe_factory("lora", utility={**utility, "backend": backend})
        result = CliRunner().invoke(main, [str(recipe), str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: judge endpoint {endpoint.base_url}/chat/completions is down")
    # stopped by the breaker (3 rounds of at most 2 attempts), not after retrying every request of every particle
    assert 3 <= endpoint.connections <= 3 * 2
    assert API_KEY not in result.output + result.stderr


def test_local_judge_counts_unparseable_answers_as_the_lowest_rating(lm, prompts, zoo):
    model, tokenizer = lm
    config = {
        "type": "judge",
        "dev": str(prompts),
        "max_new_tokens": 4,
        "backend": {"type": "local", "model": str(zoo.full[0]), "max_new_tokens": 4},
    }
    score = validate_utility(config).build("dev")(model, tokenizer)  # a tiny string model never writes "Rating:"
    assert score.value == pytest.approx(0.1) and score.details == {"mean_rating": 1.0, "unparseable": 8.0}


def test_swarm_with_the_http_judge_never_shows_the_key(zoo, prompts, recipe_factory, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    caplog.set_level(logging.DEBUG)
    with FakeChatCompletions() as server:
        utility = {
            "type": "judge",
            "dev": str(prompts),
            "test": str(prompts),
            "max_new_tokens": 4,
            "template": "Q: {prompt}\nA: {response}",
            "backend": {"type": "openai", "base_url": server.base_url, "model": "j", "api_key_env": "JUDGE_KEY"},
        }
        out = tmp_path / "out"
        result = run_swarm(load_recipe(recipe_factory("lora", utility=utility)), out, RunOptions(quiet=False))
    assert 0.1 <= result.winner_dev <= 1.0 and result.failed == 0
    history = (out / "swarm_history.jsonl").read_text()
    assert '"mean_rating"' in history and '"unparseable": 0.0' in history
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text + history
    everything += "".join(p.read_text(errors="ignore") for p in out.iterdir() if p.suffix in (".md", ".yml", ".json", ".jsonl"))
    assert API_KEY not in everything and "JUDGE_KEY" in (out / "swarm.yml").read_text()


# ------------------------------------------------------------------ lm-eval
@pytest.fixture(scope="module")
def harness_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    rows = toy.make_examples(["copy", "reverse"], 10, seed=5)
    # gold is the right answer on even items and a wrong one on odd items, so accuracy lands strictly inside (0, 1)
    items = [
        {"prompt": r["prompt"], "choices": [r["answer"], r["answer"][::-1] + "x"], "answer": i % 2} for i, r in enumerate(rows)
    ]
    toy.write_jsonl(root / "items.jsonl", items)
    (root / "tasks").mkdir()
    (root / "tasks" / "toy.yaml").write_text(
        "task: toy_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (root / "tasks" / "toy_ll.yaml").write_text(  # a continuous metric, to tell models apart
        "task: toy_ll\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'items.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{choices[0]}}"\ntarget_delimiter: ""\n'
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
    )
    return root, items


def test_lm_eval_accuracy_equals_a_hand_computation(lm, harness_task, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tokenizer = lm
    root, items = harness_task

    def logprob(context: str, continuation: str) -> float:  # lm-eval's scheme: encode whole, split off context
        head = tokenizer(context)["input_ids"]  # the tokenizer's defaults (ours adds BOS), as HFLM does
        tail = tokenizer(context + continuation)["input_ids"][len(head) :]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([head + tail])).logits[0].double(), -1)
        return sum(float(logp[len(head) - 1 + i, tok]) for i, tok in enumerate(tail))

    picks = [max(range(2), key=lambda j: logprob(it["prompt"], " " + it["choices"][j])) for it in items]  # target_delimiter " "
    expected = sum(p == it["answer"] for p, it in zip(picks, items)) / len(items)
    utility = validate_utility({"type": "lm_eval", "tasks": ["toy_mc"], "include_path": str(root / "tasks"), "batch_size": 4})
    score = utility.build("dev")(model, tokenizer)
    assert score.value == expected and score.details == {"toy_mc": expected}
    assert 0 < expected < 1
    with pytest.raises(UtilityError, match="unknown task 'nope'"):
        validate_utility({"type": "lm_eval", "tasks": ["nope"], "include_path": str(root / "tasks")}).build("dev")


def test_lm_eval_missing_is_a_clear_error(monkeypatch, harness_task):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UtilityError, match=r"needs lm-evaluation-harness .* pip install 'mergekit-swarm\[lm-eval\]'"):
        validate_utility({"type": "lm_eval", "tasks": ["toy_mc"]}).build("dev")


# ------------------------------------------------------------------ multitask
def test_aggregates():
    assert aggregate([0.5, 1.0], [1, 1], "mean") == 0.75
    assert aggregate([0.5, 1.0], [1, 1], "harmonic") == pytest.approx(2 / (2 + 1))
    assert aggregate([0.5, 1.0], [3, 1], "harmonic") == pytest.approx(4 / (6 + 1))
    assert aggregate([0.0, 1.0], [1, 1], "harmonic") == 0.0
    assert aggregate([0.5, 0.2], [1, 9], "min") == 0.2
    with pytest.raises(ValueError, match="needs scores >= 0"):
        aggregate([-0.5, 1.0], [1, 1], "harmonic")


def test_multitask_is_the_harmonic_mean_of_its_components(lm, zoo, tmp_path):
    model, tokenizer = lm
    for skill in ("reverse", "copy"):
        toy.write_jsonl(tmp_path / f"{skill}.jsonl", toy.make_examples([skill], 10, seed=500))
    components = [
        {
            "name": skill,
            "weight": w,
            "utility": {"type": "exact_match", "dev": str(tmp_path / f"{skill}.jsonl"), "max_new_tokens": 6},
        }
        for skill, w in (("reverse", 1.0), ("copy", 2.0))
    ]
    score = validate_utility({"type": "multitask", "aggregate": "harmonic", "components": components}).build("dev")(
        model, tokenizer
    )
    parts = {
        s: ExactMatch(load_examples(tmp_path / f"{s}.jsonl"), GenerationSettings(6, 32))(model, tokenizer).value
        for s in ("reverse", "copy")
    }
    assert all(0 < v < 1 for v in parts.values()), parts  # otherwise the harmonic mean would be trivially 0
    assert score.details == parts
    assert score.value == pytest.approx(aggregate([parts["reverse"], parts["copy"]], [1.0, 2.0], "harmonic"))
    with pytest.raises(ValueError, match="unknown key 'wieght' in multitask component"):
        validate_utility({"type": "multitask", "components": [{**components[0], "wieght": 1}, components[1]]})


def test_a_judge_failing_on_some_particles_is_counted_not_fatal(zoo, prompts, recipe_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    # HTTP 400 (not retried) on every 20th request: an evaluation (8 requests) sometimes includes one
    with FakeChatCompletions(mode="fail_every_20th") as server:
        utility = {
            "type": "judge",
            "dev": str(prompts),
            "max_new_tokens": 8,
            "template": "Q: {prompt}\nA: {response}",
            "backend": {"type": "openai", "base_url": server.base_url, "model": "j", "api_key_env": "JUDGE_KEY"},
        }
        out = tmp_path / "out"
        result = run_swarm(
            load_recipe(recipe_factory("lora", utility=utility, swarm={"max_iterations": 2})), out, RunOptions(quiet=True)
        )
    rows = [json.loads(line) for line in (out / "swarm_history.jsonl").read_text().splitlines()]
    errors = [r for r in rows if "error" in r]
    assert result.failed == len(errors) > 0 and len(errors) < len(rows)
    assert all("HTTP 400 Bad Request" in r["error"] for r in errors)


def test_harmonic_multitask_refuses_components_that_can_be_negative(prompts, reward_model_dir):
    nll = {"type": "nll", "dev": str(prompts)}
    exact = {"type": "exact_match", "dev": str(prompts)}
    with pytest.raises(ValueError, match="component '1:nll' can score below 0"):
        validate_utility({"type": "multitask", "components": [{"utility": exact}, {"utility": nll}]})
    assert validate_utility({"type": "multitask", "aggregate": "mean", "components": [{"utility": exact}, {"utility": nll}]})
    rm = {"type": "reward_model", "model": str(reward_model_dir), "dev": str(prompts), "normalize": {"low": 0, "high": 1}}
    assert validate_utility({"type": "multitask", "components": [{"utility": exact}, {"utility": rm}]})
    with pytest.raises(ValueError, match="can score below 0"):
        validate_utility(
            {"type": "multitask", "components": [{"utility": exact}, {"utility": {**rm, "length_penalty": "concise"}}]}
        )


def test_model_folders_of_the_objective_are_part_of_the_fingerprint(zoo, prompts, reward_model_dir, tmp_path):
    import shutil

    rm = tmp_path / "rm"
    shutil.copytree(reward_model_dir, rm)
    recipe = write_recipe(
        tmp_path / "r", zoo.lora, base=zoo.base, utility={"type": "reward_model", "model": str(rm), "dev": str(prompts)}
    )
    before = load_recipe(recipe).fingerprint()
    config = json.loads((rm / "config.json").read_text())
    (rm / "config.json").write_text(json.dumps({**config, "initializer_range": 0.5}))  # a retrained / replaced RM
    assert load_recipe(recipe).fingerprint() != before


def test_lm_eval_follows_the_resident_model_as_its_weights_change(zoo, resident_factory, harness_task, monkeypatch):
    from mergekit_swarm.weights.kernels import one_hot

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root, _ = harness_task
    resident = resident_factory(zoo.lora, "model")  # a PeftModel resident: HFLM wraps it as it is
    layout = resident.layout
    config = {"type": "lm_eval", "tasks": ["toy_ll"], "include_path": str(root / "tasks"), "metric": "perplexity,none"}
    cached = validate_utility(config).build("dev")
    values = []
    for k in (0, 1, 0):
        resident.load(one_hot(layout, 3, k))
        fresh = validate_utility(config).build("dev")(resident.model, resident.tokenizer)
        values.append(cached(resident.model, resident.tokenizer))
        assert values[-1] == fresh  # one HFLM over the changing weights = a new HFLM each time
    assert values[0] == values[2] != values[1]  # the experts really differ on this task
