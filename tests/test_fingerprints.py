"""The resume fingerprint notices any change of what a run reads, and hashes each file version once."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergekit_swarm.config import load_recipe
from mergekit_swarm.core import fingerprints
from mergekit_swarm.core.fingerprints import DigestCache
from tests.helpers import write_recipe


@pytest.fixture
def project(zoo, tmp_path):
    """A recipe over copies of two full experts (one of them with a 6 MiB tensor added: a file whose
    middle is neither of its first and last MiB), a python utility file and a data file."""
    experts = [shutil.copytree(e, tmp_path / "experts" / e.name) for e in zoo.full[1:3]]
    big = experts[0] / "model.safetensors"
    tensors = load_file(str(big))
    tensors["lm_head.extra"] = torch.zeros(3, 512, 1024)  # not a real parameter: only bytes to change
    save_file(tensors, str(big), metadata={"format": "pt"})
    (tmp_path / "score.py").write_text("def score(model, tokenizer):\n    return 1.0\n")
    shutil.copyfile(zoo.dev, tmp_path / "dev.jsonl")
    utility = {
        "type": "multitask",
        "aggregate": "mean",
        "components": [
            {"utility": {"type": "python", "function": "score.py:score"}},
            {"utility": {"type": "nll", "dev": "dev.jsonl"}},
        ],
    }
    return write_recipe(tmp_path, experts, utility=utility), experts


def fingerprint(recipe) -> str:
    return load_recipe(recipe).fingerprint()


def test_a_change_in_the_middle_of_an_expert_is_noticed(project):
    recipe, experts = project
    first = fingerprint(recipe)
    path = experts[0] / "model.safetensors"
    size = path.stat().st_size
    with path.open("r+b") as handle:  # same size, same header, same first and last MiB
        handle.seek(size // 2)
        handle.write(b"\x01\x02\x03\x04")
    assert path.stat().st_size == size
    assert fingerprint(recipe) != first


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "chat_template.jinja", "merges.txt"])
def test_tokenizer_and_config_changes_are_noticed(project, name):
    recipe, experts = project
    path = experts[1] / name
    if not path.exists():  # tokenizer files the char-level zoo does not have
        path.write_text("{{ messages }}")
    first = fingerprint(recipe)
    path.write_text(path.read_text().replace("{", "{ ", 1))
    assert fingerprint(recipe) != first


def test_the_python_utility_source_is_part_of_it_file_and_module(project, tmp_path, monkeypatch):
    recipe, _ = project
    first = fingerprint(recipe)
    (tmp_path / "score.py").write_text("def score(model, tokenizer):\n    return 2.0\n")  # nested in a multitask
    assert fingerprint(recipe) != first

    package = tmp_path / "site" / "myutils"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "scores.py").write_text("def score(model, tokenizer):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    module_recipe = write_recipe(
        tmp_path / "module", load_recipe(recipe).experts, utility={"type": "python", "function": "myutils.scores:score"}
    )
    before = fingerprint(module_recipe)
    assert "myutils.scores" not in sys.modules  # found, not imported
    (package / "scores.py").write_text("def score(model, tokenizer):\n    return 3.0\n")
    assert fingerprint(module_recipe) != before


def test_each_file_version_is_hashed_once_and_hub_blobs_not_at_all(project, tmp_path, monkeypatch):
    recipe, experts = project
    hashed = []
    real = fingerprints._sha256
    monkeypatch.setattr(fingerprints, "_sha256", lambda path, bar: hashed.append(path.name) or real(path, bar))
    monkeypatch.setenv("MERGEKIT_SWARM_CACHE", str(tmp_path / "cache"))
    first = fingerprint(recipe)
    assert "model.safetensors" in hashed and "dev.jsonl" in hashed and "score.py" in hashed
    hashed.clear()
    assert fingerprint(recipe) == first and hashed == []  # a resume pays nothing again
    assert len(DigestCache(tmp_path / "cache").entries) > 0

    (tmp_path / "dev.jsonl").write_text((tmp_path / "dev.jsonl").read_text() + '{"prompt": "a", "answer": "b"}\n')
    assert fingerprint(recipe) != first and hashed == ["dev.jsonl"]  # only the changed file

    # a model folder of the Hugging Face cache: snapshot files are links to blobs named by their hash
    hashed.clear()
    blobs, snapshot = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    blob = blobs / ("e" * 64)
    shutil.copyfile(experts[1] / "model.safetensors", blob)
    os.symlink(blob, snapshot / "model.safetensors")
    assert DigestCache(tmp_path / "cache").digests([snapshot / "model.safetensors"]) == {
        snapshot / "model.safetensors": "hub:" + "e" * 64
    }
    assert hashed == []
