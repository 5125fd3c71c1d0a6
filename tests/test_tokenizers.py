"""End to end with a real tokenizer: byte-level BPE trained locally, special tokens, ChatML.

The chat model stops its replies with `<|im_end|>`, which only its generation_config names (the
tokenizer's EOS is `<|endoftext|>`), and pads with a token of its own. Generation utilities run
in left-padded batches with `chat_template: true`; every figure of the run is checked against
generating one prompt at a time, unpadded, by hand. Experts whose tokenizers differ are
handled as mergekit handles them, or refused naming both.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.testing.chat import (
    IM_END,
    SKILLS,
    build_bpe_tokenizer,
    build_chat_lora,
    build_chat_model,
    make_examples,
)
from mergekit_swarm.testing.toy import write_jsonl
from tests.helpers import write_recipe

QUIET = RunOptions(quiet=True)
JUDGE_TEMPLATE = "Rate this answer.\nQ: {prompt}\nA: {response}"


@pytest.fixture(scope="session")
def chat(tmp_path_factory):
    """A BPE chat base, LoRA experts for the first and the last letter, a judge, data."""
    root = tmp_path_factory.mktemp("chat")
    tokenizer = build_bpe_tokenizer([f"{r['prompt']} {r['answer']}" for r in make_examples(SKILLS, 2000, seed=5)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = build_chat_model(root / "base", tokenizer, make_examples(SKILLS, 4000, seed=1), steps=150)
        experts = [
            build_chat_lora(base, root / skill, make_examples([skill], 2000, seed=10 + k), rank=4 * (k + 1), steps=60, seed=k)
            for k, skill in enumerate(SKILLS)
        ]
        judged = [{"prompt": JUDGE_TEMPLATE.format(**r), "answer": "Rating: 7/10"} for r in _responses(400)]
        judge = build_chat_model(root / "judge", tokenizer, judged, steps=40, seed=3)
    write_jsonl(root / "dev.jsonl", make_examples(SKILLS, 24, seed=100))
    return {"root": root, "base": base, "experts": experts, "judge": judge}


def _responses(n: int) -> list[dict]:
    return [{"prompt": r["prompt"], "response": r["answer"]} for r in make_examples(SKILLS, n, seed=7)]


def _by_hand(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """One prompt, unpadded, through the chat template; stops where the model's generation_config says."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _load(base, adapter=None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    return (PeftModel.from_pretrained(model, adapter) if adapter else model).eval()


def test_exact_match_with_chat_template_in_left_padded_batches(chat, tmp_path):
    from transformers import AutoTokenizer

    utility = {"type": "exact_match", "dev": str(chat["root"] / "dev.jsonl"), "chat_template": True}
    utility.update(max_new_tokens=6, batch_size=8)  # 24 prompts of different lengths: padded batches
    recipe = write_recipe(tmp_path / "recipe", chat["experts"], base=chat["base"], swarm={"particles": 4}, utility=utility)
    result = run_swarm(load_recipe(recipe), tmp_path / "out", QUIET)

    tokenizer = AutoTokenizer.from_pretrained(chat["base"])
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>" and tokenizer.bos_token is None
    rows = [json.loads(line) for line in (chat["root"] / "dev.jsonl").read_text().splitlines()]
    for expert, measured in zip(chat["experts"], result.expert_dev):
        model = _load(chat["base"], expert)
        replies = [_by_hand(model, tokenizer, row["prompt"], 6) for row in rows]
        assert all(len(reply) < 6 for reply in replies)  # stopped at <|im_end|>, not at max_new_tokens
        assert measured == sum(row["answer"] in reply for row, reply in zip(rows, replies)) / len(rows)
    assert max(result.expert_dev) > 0.2 and len(set(result.expert_dev)) > 1  # the check above has power

    written = AutoTokenizer.from_pretrained(tmp_path / "out")  # the run's tokenizer, chat template included
    assert written.chat_template == tokenizer.chat_template and written.get_vocab() == tokenizer.get_vocab()


def test_generation_stops_on_the_models_own_end_of_turn(chat):
    from transformers import AutoTokenizer

    from mergekit_swarm.utilities.text import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(chat["base"])
    model = _load(chat["base"], chat["experts"][0])
    end_of_turn = tokenizer.convert_tokens_to_ids(IM_END)
    assert stop_token_ids(model, tokenizer) == sorted({tokenizer.eos_token_id, end_of_turn})
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "first of gabji?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]

    def generated(eos) -> list[int]:
        with torch.no_grad():
            out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
        return out[0, ids.shape[1] :].tolist()

    reply = generated(stop_token_ids(model, tokenizer))
    assert reply[-1] == end_of_turn and len(reply) < 12
    assert len(generated(tokenizer.eos_token_id)) > len(reply)  # the tokenizer's EOS alone runs past the turn


def test_a_bpe_judge_rates_chat_replies(chat, tmp_path):
    backend = {"type": "local", "model": str(chat["judge"]), "max_new_tokens": 16}  # 12 BPE tokens
    utility = {"type": "judge", "dev": str(chat["root"] / "dev.jsonl"), "chat_template": True, "max_new_tokens": 6}
    utility.update(template=JUDGE_TEMPLATE, backend=backend)
    recipe = write_recipe(tmp_path / "recipe", chat["experts"], base=chat["base"], swarm={"particles": 3}, utility=utility)
    result = run_swarm(load_recipe(recipe), tmp_path / "out", QUIET)
    assert result.expert_dev == [0.7, 0.7]  # "Rating: 7/10", read from every reply
    history = [json.loads(line) for line in (tmp_path / "out" / "swarm_history.jsonl").read_text().splitlines()]
    assert all(line["details"]["unparseable"] == 0 for line in history if "details" in line)


def test_experts_with_other_vocabularies(chat, tmp_path, capsys):
    """Same embedding shapes, another added token: merged as mergekit merges it (rows as stored,
    the donor's tokenizer), with a note; refused when a tokenizer_source asks for embedding surgery."""
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(chat["experts"][1], other)
    tokenizer = AutoTokenizer.from_pretrained(chat["base"])
    tokenizer.add_tokens(["<|tool|>"])  # an id past the embedding rows: unused by the shared weights
    tokenizer.save_pretrained(other)
    utility = {"type": "nll", "dev": str(chat["root"] / "dev.jsonl")}
    experts = [chat["experts"][0], other]
    recipe = write_recipe(tmp_path / "recipe", experts, base=chat["base"], utility=utility)
    run_swarm(load_recipe(recipe), tmp_path / "out", RunOptions())
    assert "note: the vocabulary of other (e.g. '<|tool|>') differs from that of" in capsys.readouterr().err

    recipe = write_recipe(tmp_path / "recipe2", experts, base=chat["base"], utility=utility, tokenizer_source="base")
    with pytest.raises(ExpertError, match=r"vocabulary of .*other differs from that of the tokenizer_source .*'<\|tool\|>'"):
        run_swarm(load_recipe(recipe), tmp_path / "out2", QUIET)
    assert not (tmp_path / "out2").exists()
