"""All particles of an iteration in one batch: the stacked adapter forward (`weights/adapter_stack.py`),
batch sizing, fallbacks.

The stacked forward (one index select and two batched matmuls per LoRA layer for every slot's
rows) must give what PEFT's per-adapter forward gives, inside `generate` (KV cache, left padding)
and in log-likelihood scoring; every utility that scores adapter batches must really take that
path, with particles that really differ, and score exactly as one particle at a time.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import torch

from mergekit_swarm.experts import open_pool
from mergekit_swarm.experts.groups import group_layout
from mergekit_swarm.search.evaluator import LocalEvaluator
from mergekit_swarm.utilities import Utility, validate_utility
from mergekit_swarm.utilities.text import GenerationSettings, generate_for_adapters, greedy_generate
from mergekit_swarm.weights import device_memory
from mergekit_swarm.weights.device_memory import HEADROOM, HOST_FLOOR, HostMemory, particles_that_fit
from tests.helpers import API_KEY, FailsOnSlot, FakeChatCompletions, multitask_of_exact_match_and_nll

SLOTS = 4


@pytest.fixture(scope="module")
def stacked(zoo, resident_factory):
    """A resident model with 4 slots over the zoo's LoRA experts (ranks 2, 4 and 8, one rsLoRA),
    its one-slot twin, and 6 particles: the experts and mixtures beyond them."""
    pool = open_pool(list(zoo.lora))
    batched = resident_factory(pool, "tensor", slots=SLOTS)
    single = resident_factory(pool, "tensor")
    layout = batched.layout
    rng = np.random.default_rng(4)
    particles = [np.eye(3)[k][None].repeat(len(layout), 0) for k in range(3)] + [
        rng.dirichlet(np.ones(3), size=len(layout)) * 1.6 - 0.2 for _ in range(3)
    ]
    return batched, single, particles


def test_adapter_slots_are_views_of_the_stack(stacked):
    from peft.tuners.lora import Linear

    batched, _, particles = stacked
    lora_layers = [m for m in batched.model.modules() if isinstance(m, Linear)]
    assert batched.stack is not None and batched.stack.layers == len(lora_layers) > 0
    batched.load_many(particles[:SLOTS])  # written through the slots' tensors, into the stacks
    for module in lora_layers:
        pointers = {module.lora_A[name].weight.untyped_storage().data_ptr() for name in batched.slot_names}
        assert len(pointers) == 1  # one storage: the stack


def test_stacked_forward_equals_each_adapter_alone_and_peft_mixed_batches(stacked, tokenizer):
    batched, _, particles = stacked
    batched.load_many(particles[:SLOTS])
    encoded = tokenizer(["rev abcd=", "sort dcba=", "copy ab="], return_tensors="pt", padding=True)
    rows = len(encoded["input_ids"])
    with torch.no_grad():
        before = batched.stack.stacked_forwards
        together = batched.model(
            input_ids=encoded["input_ids"].repeat(SLOTS, 1),
            attention_mask=encoded["attention_mask"].repeat(SLOTS, 1),
            adapter_names=[name for name in batched.slot_names for _ in range(rows)],
        ).logits
        assert batched.stack.stacked_forwards > before  # the stacked path ran
        for s in range(SLOTS):
            batched.activate(s)
            alone = batched.model(**encoded).logits
            torch.testing.assert_close(together[s * rows : (s + 1) * rows], alone, atol=1e-5, rtol=1e-5)
        batched.activate(0)
        # rows not grouped by slot: PEFT's own mixed-batch loop, row by row the same
        before = batched.stack.stacked_forwards
        interleaved = batched.model(
            input_ids=encoded["input_ids"].repeat_interleave(SLOTS, 0),
            attention_mask=encoded["attention_mask"].repeat_interleave(SLOTS, 0),
            adapter_names=[name for _ in range(rows) for name in batched.slot_names],
        ).logits
        assert batched.stack.stacked_forwards == before
    for p in range(rows):
        for s in range(SLOTS):
            torch.testing.assert_close(interleaved[p * SLOTS + s], together[s * rows + p], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[:rows], together[rows : 2 * rows])  # the slots really differ


def test_stacked_generation_equals_one_adapter_at_a_time(stacked, tokenizer):
    batched, _, particles = stacked
    batched.load_many(particles[:SLOTS])
    prompts_ = ["rev abcdef=", "sort cab=", "copy a=", "rev ab=", "sort fedcbaa="]  # lengths differ: left padding
    settings = GenerationSettings(max_new_tokens=7, batch_size=3)
    together = generate_for_adapters(batched.model, tokenizer, prompts_, settings, batched.slot_names)
    for s in range(SLOTS):
        batched.activate(s)
        assert together[s] == greedy_generate(batched.model, tokenizer, prompts_, GenerationSettings(7, 1)), s
    batched.activate(0)
    assert len({tuple(texts) for texts in together}) > 1


def test_stacked_generation_from_a_shared_prefix_equals_plain_left_padding(stacked, tokenizer, monkeypatch):
    """Prompts that begin alike (as under a chat template) are prefilled once per slot (`shared_prefix`):
    the stacked forward serves that pass too, and every slot's replies are those of plain left padding."""
    from mergekit_swarm.utilities import text

    batched, _, particles = stacked
    batched.load_many(particles[:SLOTS])
    prompts_ = [f"the task is this one: {p}" for p in ["rev abcdef=", "sort cab=", "copy a=", "rev ab=", "sort fedcbaa="]]
    settings = GenerationSettings(max_new_tokens=7, batch_size=3)
    assert text._encode_prompts(tokenizer, tuple(prompts_[:3]), False, True).shared == 1 + len("the task is this one: ")
    shared = generate_for_adapters(batched.model, tokenizer, prompts_, settings, batched.slot_names)
    monkeypatch.setattr(text, "shares_prefixes", lambda model: False)
    assert shared == generate_for_adapters(batched.model, tokenizer, prompts_, settings, batched.slot_names)
    assert len({tuple(texts) for texts in shared}) > 1


def _batching_utilities(zoo, prompts, reward_model_dir, judge_url):
    generation = {"dev": str(zoo.dev), "batch_size": 5, "max_new_tokens": 6}
    configs = {
        "exact_match": {"type": "exact_match", **generation},
        "nll": {"type": "nll", "dev": str(zoo.dev), "batch_size": 7},
        "multiple_choice (loglikelihood)": {"type": "multiple_choice", "dev": str(zoo.mc_dev), "batch_size": 4},
        "multiple_choice (generate)": {"type": "multiple_choice", "dev": str(zoo.mc_dev), "parse": "generate", "batch_size": 4},
        "reward_model": {"type": "reward_model", "dev": str(prompts), "model": str(reward_model_dir), "max_new_tokens": 6},
        "judge": {
            "type": "judge",
            "dev": str(prompts),
            "max_new_tokens": 6,
            "template": "Q: {prompt}\nA: {response}",
            "backend": {"type": "openai", "base_url": judge_url, "model": "judge", "retries": 0, "api_key_env": "JUDGE_KEY"},
        },
        "multitask": multitask_of_exact_match_and_nll(zoo, generation),
    }
    return {name: validate_utility(config).build("dev") for name, config in configs.items()}


def test_every_batching_utility_takes_the_stacked_path_and_scores_as_one_at_a_time(
    stacked,
    zoo,
    prompts,
    reward_model_dir,
    monkeypatch,
):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    batched, single, particles = stacked
    with FakeChatCompletions(delay=0.0) as judge:
        for name, utility in _batching_utilities(zoo, prompts, reward_model_dir, judge.base_url).items():
            assert utility.scores_adapter_batches, name
            calls, forwards = [], batched.stack.stacked_forwards
            score_adapters = utility.score_adapters
            utility.score_adapters = lambda *args, _f=score_adapters, _calls=calls: _calls.append(len(args[2])) or _f(*args)
            engine = LocalEvaluator(batched, utility)
            together = list(engine.evaluate(particles))
            del utility.score_adapters
            alone = list(LocalEvaluator(single, utility).evaluate(particles))
            assert calls == [SLOTS, len(particles) - SLOTS], name  # batched, in full groups
            assert batched.stack.stacked_forwards > forwards and engine.fallbacks == 0, name
            assert not any(e.failed or e.fallback for e in together + alone), name
            assert [e.utility for e in together] == [e.utility for e in alone], name
            assert [e.details for e in together] == [e.details for e in alone], name
            if not name.startswith("multiple_choice"):  # (every particle gets those easy choices right)
                assert len({e.utility for e in together}) > 1, name  # the particles really differ


def test_a_failed_batch_is_logged_once_counted_and_marked(stacked, caplog):
    batched, _, particles = stacked
    engine = LocalEvaluator(batched, FailsOnSlot())
    with caplog.at_level(logging.WARNING):
        results = list(engine.evaluate(particles[:3])) + list(engine.evaluate(particles[:3]))
    assert engine.fallbacks == 6 and all(r.fallback == "RuntimeError: out of memory in the big batch" for r in results)
    assert [r.utility for r in results[:3]] == [1.0, -np.inf, 0.0]
    assert sum("batched scoring failed" in r.message for r in caplog.records) == 1


class OutOfMemoryAbove(Utility):
    """Scores like `nll`, but a batch of more than `fits` adapters runs out of (simulated) memory."""

    def __init__(self, inner: Utility, fits: int):
        self.inner, self.fits, self.batches = inner, fits, []

    @property
    def scores_adapter_batches(self) -> bool:
        return True

    def score_adapters(self, model, tokenizer, adapters):
        self.batches.append(len(adapters))
        if len(adapters) > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.score_adapters(model, tokenizer, adapters)

    def __call__(self, model, tokenizer):
        return self.inner(model, tokenizer)


def test_out_of_memory_halves_the_batch_without_changing_any_score(stacked, zoo):
    batched, single, particles = stacked
    nll = validate_utility({"type": "nll", "dev": str(zoo.dev), "batch_size": 7}).build("dev")
    utility = OutOfMemoryAbove(nll, fits=2)
    engine = LocalEvaluator(batched, utility)
    together = list(engine.evaluate(particles))
    assert engine.batch_limit == 2 and engine.fallbacks == 0
    assert utility.batches[:3] == [4, 2, 2] and all(b <= 2 for b in utility.batches[3:])
    assert [e.utility for e in together] == [e.utility for e in LocalEvaluator(single, nll).evaluate(particles)]


class FakeMemory:
    """A device whose free memory holds `free` bytes; one particle's scoring peaks at `per` bytes."""

    budget = "the fake device's memory"

    def __init__(self, free: int, per: int):
        self.free, self.per, self.measured = free, per, 0

    def free_bytes(self) -> int:
        return self.free

    def peak(self):
        from contextlib import contextmanager

        @contextmanager
        def measure():
            self.measured += 1
            yield [self.per]

        return measure()

    def release(self) -> None:
        pass


def test_batch_size_is_measured_once_on_the_device(stacked, zoo):
    batched, single, particles = stacked
    nll = validate_utility({"type": "nll", "dev": str(zoo.dev), "batch_size": 7}).build("dev")
    memory = FakeMemory(free=1000, per=300)  # 80% of 1000 holds 2 particles' peaks
    engine = LocalEvaluator(batched, OutOfMemoryAbove(nll, fits=2), memory=memory)
    together = list(engine.evaluate(particles)) + list(engine.evaluate(particles))
    assert memory.measured == 1 and engine.batch_limit == 2 == particles_that_fit(1000, 300, SLOTS)
    assert engine.utilities["dev"].batches[:1] == [2]  # never more than fit: no out-of-memory to recover from
    assert [e.utility for e in together] == 2 * [e.utility for e in LocalEvaluator(single, nll).evaluate(particles)]


needs_proc = pytest.mark.skipif(not HostMemory.available(), reason="measuring a peak needs Linux's /proc/self/status")


@needs_proc
def test_host_memory_measures_a_peak_and_budgets_the_models_size():
    assert isinstance(device_memory.device_memory("cpu", host_model_bytes=1), HostMemory)
    assert device_memory.device_memory("cpu") is None  # a fixed particles_per_batch: as asked
    probe = HostMemory(model_bytes=2**30)
    with probe.peak() as used:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written: resident
        time.sleep(0.05)  # (sampled every 2 ms)
        del block
    assert 60 * 2**20 <= used[0] < 128 * 2**20  # the growth at the peak, though freed before the end
    assert not [t for t in threading.enumerate() if t.name == "host-memory-peak"]  # the sampler has stopped
    available = HostMemory._meminfo("MemAvailable")
    assert probe.free_bytes() == int(min(2**30 / HEADROOM, available))
    assert HostMemory(model_bytes=1).free_bytes() == int(min(HOST_FLOOR / HEADROOM, available))  # small models


@needs_proc
def test_auto_on_a_cpu_batches_what_fits_the_models_size_and_scores_the_same(stacked, zoo, monkeypatch):
    batched, single, particles = stacked
    nll = validate_utility({"type": "nll", "dev": str(zoo.dev), "batch_size": 7}).build("dev")
    alone = [e.utility for e in LocalEvaluator(single, nll).evaluate(particles)]
    monkeypatch.setattr(device_memory, "HOST_FLOOR", 0)
    tight = LocalEvaluator(batched, nll, memory=HostMemory(model_bytes=1))  # a budget under any particle's peak
    assert [e.utility for e in tight.evaluate(particles)] == alone and tight.batch_limit == 1
    roomy = LocalEvaluator(batched, nll, memory=HostMemory(model_bytes=2**40))  # bounded by what is free
    assert [e.utility for e in roomy.evaluate(particles)] == alone and roomy.batch_limit == SLOTS


@pytest.mark.gpu
def test_on_cuda_stacked_batches_and_full_particles_equal_the_cpu_reference(zoo, tokenizer, resident_factory):
    """On a GPU: the stacked forward equals each adapter alone; full particles written from experts
    held on the device and streamed through pinned buffers are the CPU reference, bit for bit."""
    from mergekit_swarm.weights.kernels import combine

    resident = resident_factory(zoo.lora, "tensor", device="cuda", slots=3)
    layout = resident.layout
    particles = [np.eye(3)[k][None].repeat(len(layout), 0) for k in range(3)]
    resident.load_many(particles)
    prompts_ = ["rev abcdef=", "sort cab=", "copy a="]
    together = generate_for_adapters(resident.model, tokenizer, prompts_, GenerationSettings(7, 3), resident.slot_names)
    for s in range(3):
        resident.activate(s)
        assert together[s] == greedy_generate(resident.model, tokenizer, prompts_, GenerationSettings(7, 1))
    coefficients = np.random.default_rng(3).normal(size=(len(group_layout(open_pool(list(zoo.full)), "layer")), 3))
    for hold in (True, False):
        resident = resident_factory(zoo.full, "layer", device="cuda", hold_experts=hold)
        layout = resident.layout
        resident.load(coefficients)
        expected = dict(combine(open_pool(list(zoo.full)), layout, coefficients))
        for name, tensor in expected.items():
            assert torch.equal(resident.tensors()[name].cpu(), tensor), (hold, name)
