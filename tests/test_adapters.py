"""`base+adapter` experts, mergekit's syntax: baked into a full pool by mergekit's own code, or used as
adapters in a LoRA pool on that same base; a pool of full fine-tunes and adapters is a full pool."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from mergekit_swarm.cli import main
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.experts import FullModelPool, LoraPool, open_recipe_pool
from tests.helpers import write_recipe


def mergekit_bake(base, adapter, cache) -> dict[str, torch.Tensor]:
    from mergekit.common import ModelReference

    merged = ModelReference.model_validate(f"{base}+{adapter}").merged(cache_dir=str(cache))
    return load_file(f"{merged.model.path}/model.safetensors")


def test_base_plus_adapter_in_a_full_pool_is_baked_by_mergekit_bit_for_bit(zoo, tmp_path):
    recipe_file = write_recipe(tmp_path, [f"{zoo.base}+{zoo.lora[0]}", zoo.full[1]], utility={"type": "nll", "dev": str(zoo.dev)})
    recipe = load_recipe(recipe_file).resolve()
    pool = open_recipe_pool(recipe)
    assert isinstance(pool, FullModelPool)
    baked = recipe.experts[0]
    assert recipe.reference(baked) == f"{zoo.base}+{zoo.lora[0]}"  # how recipes and cards name it
    reference = mergekit_bake(zoo.base, zoo.lora[0], tmp_path / "stock-cache")
    ours = load_file(str(baked / "model.safetensors"))
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    again = load_recipe(recipe_file).resolve()  # cached once: the same folder, not baked again
    assert (
        again.experts[0] == baked
        and (baked / "model.safetensors").stat().st_mtime == again.experts[0].joinpath("model.safetensors").stat().st_mtime
    )


def test_a_run_of_a_mixed_pool_writes_a_stock_recipe_with_base_plus_adapter(zoo, tmp_path):
    """Full fine-tunes and a plain adapter folder of the base: a full pool, the adapter baked; the winner's
    mergekit_config.yml names it base+adapter, so stock mergekit (with --lora-merge-cache) can run it."""
    utility = {"type": "nll", "dev": str(zoo.dev), "batch_size": 16}
    recipe_file = write_recipe(tmp_path, [zoo.full[1], zoo.lora[0]], base=zoo.base, utility=utility, swarm={"max_iterations": 1})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(recipe_file), str(out), "--quiet", "--lora-merge-cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "cache").iterdir())  # baked where mergekit's flag says
    models = [m["model"] for m in yaml.safe_load((out / "mergekit_config.yml").read_text())["models"]]
    assert models == [str(zoo.full[1]), f"{zoo.base}+{zoo.lora[0]}"]
    assert (out / "model.safetensors").exists() or (out / "model.safetensors.index.json").exists()


def test_base_plus_adapter_on_the_recipes_base_stays_an_adapter(zoo, tmp_path):
    experts = [f"{zoo.base}+{zoo.lora[0]}", zoo.lora[1]]
    recipe = load_recipe(write_recipe(tmp_path, experts, base=zoo.base, utility={"type": "nll", "dev": str(zoo.dev)})).resolve()
    pool = open_recipe_pool(recipe)
    assert isinstance(pool, LoraPool) and list(recipe.experts) == [zoo.lora[0], zoo.lora[1]]  # nothing baked


def test_refusals_name_the_expert_and_what_to_write(zoo, tmp_path):
    utility = {"type": "nll", "dev": str(zoo.dev)}
    not_adapter = write_recipe(tmp_path / "a", [f"{zoo.base}+{zoo.full[0]}", zoo.full[1]], utility=utility)
    with pytest.raises(ConfigError, match=r"models\[0\]: .* is not a PEFT adapter folder .* the part after '\+' is the adapter"):
        load_recipe(not_adapter).resolve()
    no_base = write_recipe(tmp_path / "b", [zoo.full[0], zoo.lora[0]], utility=utility)
    with pytest.raises(ConfigError, match=r"models\[1\] .* is a LoRA adapter among full models: write it as BASE\+"):
        load_recipe(no_base).resolve()
    base_as_adapter = write_recipe(tmp_path / "c", [zoo.full[0], zoo.full[1]], base=f"{zoo.base}+{zoo.lora[0]}", utility=utility)
    with pytest.raises(ConfigError, match="base_model: base\\+adapter names an expert; here give a model"):
        load_recipe(base_as_adapter)
