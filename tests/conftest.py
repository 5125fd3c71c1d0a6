"""Session fixtures: a zoo of tiny real models (built once, offline) and recipe helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_swarm.testing import toy

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


def write_recipe(folder: Path, experts, *, base=None, swarm=None, utility=None, **top) -> Path:
    """A recipe file in `folder` (absolute model paths unless given as strings)."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {
        "merge_method": "model_swarms",
        "models": [{"model": str(e)} for e in experts],
        "swarm": {"particles": 4, "max_iterations": 2, "patience": 5, "seed": 7, **(swarm or {})},
        "utility": utility,
        **top,
    }
    if base is not None:
        recipe["base_model"] = str(base)
    path = folder / "swarm.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


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
