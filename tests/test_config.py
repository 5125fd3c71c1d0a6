"""Recipe validation: clear one-line errors, suggestions, paths relative to the recipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ConfigError


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def valid(zoo) -> dict:
    return {
        "merge_method": "model_swarms",
        "base_model": str(zoo.base),
        "models": [{"model": str(p)} for p in zoo.lora],
        "dtype": "float32",
        "swarm": {"particles": 5, "inertia": 0.2},
        "utility": {"type": "exact_match", "dev": str(zoo.dev), "max_new_tokens": 4},
    }


def error_of(tmp_path, data) -> str:
    with pytest.raises(ConfigError) as err:
        load_recipe(write(tmp_path / "swarm.yml", data))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_valid_recipe(tmp_path, valid, zoo):
    recipe = load_recipe(write(tmp_path / "swarm.yml", valid))
    assert recipe.experts == tuple(zoo.lora) and recipe.base_model == zoo.base
    assert recipe.swarm.particles == 5 and recipe.swarm.inertia == 0.2 and recipe.swarm.cognitive == 0.3
    assert recipe.utility.type == "exact_match" and recipe.utility.dev == zoo.dev
    assert recipe.swarm.granularity == "model"


@pytest.mark.parametrize(
    "section, key, expected",
    [
        ("swarm", "inertai", "unknown key 'inertai' in swarm (did you mean 'inertia'?)"),
        ("swarm", "granulrity", "unknown key 'granulrity' in swarm (did you mean 'granularity'?)"),
        ("utility", "max_new_token", "unknown key 'max_new_token' in utility (did you mean 'max_new_tokens'?)"),
        (None, "swarms", "unknown key 'swarms' in the recipe (did you mean 'swarm'?)"),
        ("evaluation", "per_batch", "unknown key 'per_batch' in evaluation (did you mean 'particles_per_batch'?)"),
    ],
)
def test_unknown_keys_are_named_with_a_suggestion(tmp_path, valid, section, key, expected):
    valid["evaluation"] = {}
    target = valid[section] if section else valid
    target[key] = 1
    assert expected in error_of(tmp_path, valid)


def test_bad_values_and_types_name_the_key(tmp_path, valid):
    valid["swarm"]["particles"] = 2
    assert "swarm.particles = 2 is fewer than the 3 experts" in error_of(tmp_path, valid)
    valid["swarm"]["particles"] = 6
    valid["swarm"]["step_decay"] = 1.5
    assert "swarm: step_decay: Input should be less than or equal to 1" in error_of(tmp_path, valid)
    del valid["swarm"]["step_decay"]
    valid["utility"]["type"] = "exact_mach"
    assert "utility: unknown utility type 'exact_mach' (did you mean 'exact_match'?)" in error_of(tmp_path, valid)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d.update(merge_method="linear"), "merge_method is 'linear'; a swarm recipe needs merge_method: model_swarms"),
        (lambda d: d.update(slices=[{"sources": []}]), "slices: recipes are not supported by model_swarms"),
        (lambda d: d.pop("utility"), "missing the utility: section"),
        (lambda d: d.update(dtype="float8"), "dtype: unknown dtype 'float8'"),
        (lambda d: d["models"].append({"model": "./nowhere"}), "models[3]: model folder ./nowhere not found"),
        (lambda d: d["models"][0].update(parameters={"weight": 1.0}), "models[0] has parameters:"),
        (lambda d: d.update(tokenizer={"source": "base", "pad_to_multiple_of": 64}), "change the embeddings' shape"),
        (lambda d: (d.pop("base_model"), d.update(tokenizer_source="base")), "tokenizer_source: base needs a base_model"),
    ],
)
def test_refused_recipes(tmp_path, valid, edit, expected):
    edit(valid)
    assert expected in error_of(tmp_path, valid)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("merge_method: model_swarms\nmodels: [\n  - model: a\nswarm: {")
    with pytest.raises(ConfigError, match=r"broken.yml:\d+: invalid YAML"):
        load_recipe(path)


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, valid, zoo, monkeypatch):
    folder = zoo.base.parent  # the zoo root holds base/, lora/ and data/
    valid["base_model"] = "./base"
    valid["models"] = [{"model": f"lora/{p.name}"} for p in zoo.lora]
    valid["utility"]["dev"] = "data/dev.jsonl"
    recipe_path = write(folder / "recipes" / ".." / "relative.yml", valid)
    monkeypatch.chdir(tmp_path)  # somewhere else entirely
    recipe = load_recipe(os.path.relpath(recipe_path, tmp_path))
    assert recipe.base_model == zoo.base
    assert recipe.experts == tuple(zoo.lora)
    assert recipe.utility.dev == zoo.dev


def test_python_utility_file_resolves_against_the_recipe(tmp_path, valid):
    (tmp_path / "mine.py").write_text("def score(model, tokenizer):\n    return 1.0\n")
    valid["utility"] = {"type": "python", "function": "mine.py:score"}
    recipe = load_recipe(write(tmp_path / "swarm.yml", valid))
    assert recipe.utility.function == f"{tmp_path / 'mine.py'}:score"
    valid["utility"] = {"type": "python", "function": "missing.py:score"}
    assert "utility file" in error_of(tmp_path, valid) and "missing.py does not exist" in error_of(tmp_path, valid)


def test_fingerprint_changes_with_settings_data_and_expert_weights(tmp_path, valid, zoo):
    import shutil

    from safetensors.torch import load_file, save_file

    data = tmp_path / "dev.jsonl"
    shutil.copyfile(zoo.dev, data)
    expert = tmp_path / "expert"
    shutil.copytree(zoo.lora[0], expert)
    valid["utility"]["dev"] = str(data)
    valid["models"][0]["model"] = str(expert)

    def fingerprint() -> str:
        return load_recipe(write(tmp_path / "swarm.yml", valid)).fingerprint()

    first = fingerprint()
    assert fingerprint() == first
    valid["evaluation"] = {"particles_per_batch": 3}  # how particles are evaluated, not what is searched
    assert fingerprint() == first
    assert load_recipe(write(tmp_path / "swarm.yml", valid)).evaluation.particles_per_batch == 3
    valid["swarm"]["seed"] = 1
    assert fingerprint() != first
    valid["swarm"]["seed"] = 42
    assert fingerprint() == first
    valid["swarm"]["stall_probes"] = 0  # another search
    without_probes = fingerprint()
    assert without_probes != first
    valid["swarm"]["probe_radius"] = 0.3  # unused without probes
    assert fingerprint() == without_probes
    del valid["swarm"]["stall_probes"], valid["swarm"]["probe_radius"]

    data.write_text(data.read_text() + '{"prompt": "copy ab=", "answer": "ab"}\n')
    second = fingerprint()
    assert second != first

    tensors = load_file(str(expert / "adapter_model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1  # a retrained expert: same names, shapes and file size
    save_file(tensors, str(expert / "adapter_model.safetensors"), metadata={"format": "pt"})
    assert fingerprint() != second
