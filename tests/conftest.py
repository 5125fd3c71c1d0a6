"""Shared fixtures: a zoo of tiny real models (built once, offline), recipes and resident models over it,
and the models and prompt files that several test modules score with. (Builders: tests/helpers.py.)"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mergekit_swarm.testing import toy
from tests.helpers import resident_of, write_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

SKILLS = ("reverse", "sort", "copy")


@pytest.fixture(scope="session", autouse=True)
def digest_cache(tmp_path_factory) -> Path:
    """The fingerprints' digest cache of this test session, never the user's own (~/.cache)."""
    folder = tmp_path_factory.mktemp("digest-cache")
    os.environ["MERGEKIT_SWARM_CACHE"] = str(folder)
    return folder


@dataclass(frozen=True)
class Zoo:
    base: Path
    lora: tuple[Path, ...]  # ranks 2, 4, 8 with different alphas (one rsLoRA)
    full: tuple[Path, ...]  # the first one sharded
    dev: Path
    test: Path
    mc_dev: Path


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    root = tmp_path_factory.mktemp("zoo")
    base = toy.build_base(root / "base", skills=SKILLS, steps=40, seed=0)
    lora = []
    for i, (skill, rank, alpha) in enumerate([("reverse", 2, 4), ("sort", 4, 4), ("copy", 8, 32)]):
        path = toy.build_lora_expert(base, root / "lora" / skill, skill, r=rank, alpha=alpha, steps=12, lr=1e-2, seed=i)
        lora.append(path)
    _make_rslora(lora[1])
    full = []
    for i, skill in enumerate(SKILLS):
        path = toy.build_full_expert(base, root / "full" / skill, skill, steps=8, seed=i)
        full.append(path)
    _reshard(full[0], max_shard_size="60KB")
    toy.write_jsonl(root / "data" / "dev.jsonl", toy.make_examples(SKILLS, 12, seed=100))
    toy.write_jsonl(root / "data" / "test.jsonl", toy.make_examples(SKILLS, 9, seed=200))
    toy.write_jsonl(root / "data" / "mc_dev.jsonl", _multiple_choice(toy.make_examples(SKILLS, 10, seed=300)))
    return Zoo(
        base, tuple(lora), tuple(full), root / "data" / "dev.jsonl", root / "data" / "test.jsonl", root / "data" / "mc_dev.jsonl"
    )


@pytest.fixture(scope="session")
def tokenizer(zoo):
    """The zoo's character tokenizer (every model of the zoo shares it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(zoo.base)


def _make_rslora(adapter: Path) -> None:
    """Mark an adapter as rsLoRA (scaling alpha/sqrt(r)): the pool must fold that scaling."""
    import json

    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["use_rslora"] = True
    config_path.write_text(json.dumps(config))


def _reshard(model_dir: Path, max_shard_size: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()
    model.save_pretrained(model_dir, max_shard_size=max_shard_size)
    assert (model_dir / "model.safetensors.index.json").exists()


def _multiple_choice(rows: list[dict]) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        wrong = row["answer"][::-1] + "x"
        choices = [row["answer"], wrong] if i % 2 == 0 else [wrong, row["answer"]]
        out.append({"prompt": row["prompt"], "choices": choices, "answer": i % 2})
    return out


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def recipe_factory(tmp_path, zoo):
    """Write a recipe over the zoo: `recipe_factory("lora", swarm={...}, utility={...})`."""

    def make(kind: str = "lora", *, swarm=None, utility=None, folder: Path | None = None, **top) -> Path:
        experts = zoo.lora if kind == "lora" else zoo.full
        utility = utility or {"type": "nll", "dev": str(zoo.dev), "test": str(zoo.test), "batch_size": 16}
        return write_recipe(
            folder or tmp_path / "recipe", experts, base=zoo.base if kind == "lora" else None, swarm=swarm, utility=utility, **top
        )

    return make


@pytest.fixture(scope="session")
def resident_factory(zoo, tokenizer):
    """Build a resident model over the zoo: `resident_factory(zoo.lora, "layer", slots=3)` (expert folders
    or a pool; LoRA pools on the zoo's base, full pools on their first expert; the zoo's tokenizer)."""

    def make(experts, granularity: str = "model", **options):
        return resident_of(experts, granularity, base=zoo.base, tokenizer=tokenizer, **options)

    return make


# ------------------------------------------------------------------ models and prompts that utilities score with
@pytest.fixture(scope="module")
def lm(zoo):
    """The zoo's third full expert and its tokenizer: a tiny model that utilities score."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(zoo.full[2]).eval(), AutoTokenizer.from_pretrained(zoo.full[2])


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """A file of prompts without answers (reverse and copy), for utilities that judge free answers."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    toy.write_jsonl(path, [{"prompt": row["prompt"]} for row in toy.make_examples(["reverse", "copy"], 8, seed=400)])
    return path


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A random-init 1-label classifier whose tokenizer has no pad token (TRL convention)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<s>", "</s>", "<unk>", *toy.ALPHABET])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tokenizer.pad_token is None
    torch.manual_seed(0)
    config = toy.tiny_llama_config(
        len(vocab), hidden_size=32, layers=1, num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=None
    )
    path = tmp_path_factory.mktemp("rm") / "rm"
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
