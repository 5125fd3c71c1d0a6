"""Builders shared by the test modules (test modules never import one another: what two of them
need lives here, and pytest fixtures over it in conftest.py).

* recipes: `write_recipe`, and `experts_answers`, a dev file on which the zoo's experts differ;
* resident models: `resident_of` (the `resident_factory` fixture fills in the zoo's base and tokenizer);
* utilities scored in batches: `FailsOnSlot`, `multitask_of_exact_match_and_nll`;
* a chat-completions judge endpoint: `FakeChatCompletions` and its `API_KEY`;
* the Ray backend: `spy_on_submissions`;
* model folders: `tensors`, `assert_same_tensors`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from mergekit_swarm.utilities import Score, Utility

API_KEY = "sk-test-5ecret-k3y"


# ------------------------------------------------------------------ recipes
# LoRA recipes of the suite search in factor space unless a test says otherwise: most tests check what
# holds in both spaces, and factor space is the one whose mergekit_config.yml is a `model_swarms` recipe
# that `mergekit-yaml` rebuilds the winner from; update space (the default) has its own tests
# (test_lora_spaces, and the quickstart and the SmolLM2 example in CI).
SUITE_SWARM = {"particles": 4, "max_iterations": 2, "patience": 5, "seed": 7, "lora_space": "factor"}


def write_recipe(folder: Path, experts, *, base=None, swarm=None, utility=None, **top) -> Path:
    """A recipe file in `folder` (absolute model paths unless given as strings)."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {
        "merge_method": "model_swarms",
        "models": [{"model": str(e)} for e in experts],
        "swarm": {**SUITE_SWARM, **(swarm or {})},
        "utility": utility,
        **top,
    }
    if base is not None:
        recipe["base_model"] = str(base)
    path = folder / "swarm.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def experts_answers(zoo, kind: str, tokenizer, folder, source: Path | None = None, favourite: float = 0.0) -> Path:
    """An exact-match dev file on which the experts of the `kind` pool, and so their mixes, score
    differently: the gold answer of prompt i is what expert i % 3 itself generates for it. (On the
    zoo's own answers its LoRA particles all score 0, equal whatever batching does.) `source`: the
    prompts (default: the zoo's dev file); `favourite`: the share of the prompts (every other one
    first) whose gold answer is expert 0's instead, so that it and its mixes score high."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mergekit_swarm.testing import toy
    from mergekit_swarm.utilities.data import load_examples
    from mergekit_swarm.utilities.text import GenerationSettings, greedy_generate

    examples = load_examples(source or zoo.dev)
    experts = zoo.lora if kind == "lora" else zoo.full
    rows = [{"prompt": e.prompt, "answer": e.answer} for e in examples]
    for k, expert in enumerate(experts):
        model = AutoModelForCausalLM.from_pretrained(zoo.base if kind == "lora" else expert)
        model = PeftModel.from_pretrained(model, expert) if kind == "lora" else model
        favoured = set(range(0, len(rows), 2)[: round(favourite * len(rows))])
        mine = [i for i in range(len(rows)) if (0 if i in favoured else i % len(experts)) == k]
        generated = greedy_generate(model.eval(), tokenizer, [rows[i]["prompt"] for i in mine], GenerationSettings(6, 8))
        for i, text in zip(mine, generated):
            rows[i]["answer"] = text.strip() or rows[i]["answer"]
    path = Path(folder) / f"{kind}_dev{'_' + str(favourite) if favourite else ''}.jsonl"
    toy.write_jsonl(path, rows)
    return path


# ------------------------------------------------------------------ resident models
def resident_of(
    experts, granularity: str = "model", *, base: Path | None = None, tokenizer, model_dtype=None, slots: int = 1, **options
):
    """`ResidentModel.open` over `experts` (an expert pool, or expert folders opened with `open_pool`) with
    parameter groups of `granularity`, loaded from `base` for a LoRA pool and from the first expert for a
    full-model pool; `options` are its other arguments (`device`, `hold_experts`, ...). The pool and the
    layout are the model's `pool` and `layout` (a full pool held on the device: the held copy)."""
    from mergekit_swarm.experts import ExpertPool, LoraPool, open_pool
    from mergekit_swarm.experts.groups import group_layout
    from mergekit_swarm.weights.resident import ResidentModel

    pool = experts if isinstance(experts, ExpertPool) else open_pool(list(experts))
    if isinstance(pool, LoraPool) and base is None:
        raise ValueError("a LoRA pool needs the base model it adapts")
    source = base if isinstance(pool, LoraPool) else pool.paths[0]
    layout = group_layout(pool, granularity)
    return ResidentModel.open(
        pool, layout, model_source=source, tokenizer=tokenizer, model_dtype=model_dtype, slots=slots, **options
    )


# ------------------------------------------------------------------ utilities scored in batches
def multitask_of_exact_match_and_nll(zoo, generation: dict) -> dict:
    """A multitask utility config whose components batch in two different ways (generation, log-likelihood)."""
    return {
        "type": "multitask",
        "aggregate": "mean",
        "components": [
            {"name": "em", "utility": {"type": "exact_match", **generation}},
            {"name": "nll", "utility": {"type": "nll", "dev": str(zoo.dev)}},
        ],
    }


class FailsOnSlot(Utility):
    """Batched scoring raises; one at a time, only the particle in slot 1 fails."""

    @property
    def scores_adapter_batches(self) -> bool:
        return True

    def score_adapters(self, model, tokenizer, adapters):
        raise RuntimeError("out of memory in the big batch")

    def __call__(self, model, tokenizer):
        if model.active_adapter == "swarm_1":
            raise ValueError("bad particle")
        return Score(float(model.active_adapter == "swarm"), {"seen": 1.0})


# ------------------------------------------------------------------ a judge endpoint
class FakeChatCompletions:
    """A real HTTP server on 127.0.0.1 answering like a chat-completions API. The rating is
    derived from the judged response (1 + its length, at most 10), so tests can predict it.
    The first `fail_first` requests get a 503; those numbered (from 1) in `drop` no answer at all."""

    def __init__(self, fail_first: int = 0, delay: float = 0.05, mode: str = "rate", drop: Collection[int] = ()):
        self.requests, self.fail_first, self.delay, self.mode, self.drop = [], fail_first, delay, mode, set(drop)
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    failing = len(outer.requests) <= outer.fail_first
                    dropped = len(outer.requests) in outer.drop
                    twentieth = len(outer.requests) % 20 == 0  # counted on arrival, not when answering
                self.counted = True
                try:
                    threading.Event().wait(outer.delay)
                    if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                        return self._send(401, {"error": {"message": "invalid api key"}})
                    if failing:
                        return self._send(503, {"error": {"message": "overloaded"}})
                    if dropped:  # hang up without a word: the client sees the connection closed
                        self.close_connection = True
                        return
                    if outer.mode == "redirect":
                        self._done()
                        self.send_response(307)
                        self.send_header("Location", "http://127.0.0.1:9/steal")
                        self.send_header("Content-Length", "0")
                        return self.end_headers()
                    response = body["messages"][0]["content"].split("A: ", 1)[1]
                    if outer.mode == "null":
                        return self._send(200, {"choices": [{"message": {"role": "assistant", "content": None}}]})
                    if outer.mode == "fail_every_20th" and twentieth:
                        return self._send(400, {"error": {"message": "bad request"}})
                    content = f"Looks fine. Rating: {min(10, 1 + len(response))}/10"
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})
                finally:
                    self._done()

            def _done(self):
                """Leave the in-flight count before the client can read the answer and send its next request."""
                if self.counted:
                    self.counted = False
                    with outer.lock:
                        outer.in_flight -= 1

            def _send(self, status, payload):
                self._done()
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ the Ray backend
def spy_on_submissions(monkeypatch, then=None) -> list:
    """Record every (evaluator, worker, task) the driver submits; `then(calls)` runs after each."""
    from mergekit_swarm.search.ray_backend import RayEvaluator

    calls = []
    submit = RayEvaluator._submit

    def spy(self, worker, task):
        ref = submit(self, worker, task)
        calls.append((self, worker, task))
        if then is not None:
            then(calls)
        return ref

    monkeypatch.setattr(RayEvaluator, "_submit", spy)
    return calls


# ------------------------------------------------------------------ model folders
def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 0
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


# ------------------------------------------------------------------ registry (in process)
