"""Every file a run reads, when it is broken, gives one line naming the file (and line), a non-zero
exit and no output: data files, recipes, adapter configs, weight indexes, the resume state."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from mergekit_swarm.cli import main
from mergekit_swarm.core.errors import ConfigError
from mergekit_swarm.core.storage import read_json, read_jsonl, read_text
from tests.helpers import write_recipe

FAULTS = {
    "not UTF-8": (lambda p: p.write_bytes(b'{"prompt": "caf\xe9", "answer": "x"}\n'), r"{p}:1: not UTF-8 text \(byte 0xe9\)"),
    "a folder": (lambda p: p.mkdir(), r"{p} is a folder, not a file"),
    "unreadable": (None, r"cannot read .*{p}: Not a directory"),
    "not JSON": (lambda p: p.write_text('{"a": 1}\n{oops\n'), r"{p}:2: invalid JSON \(Expecting property name"),
    "wrong JSON type": (lambda p: p.write_text('{"a": 1}\n[1, 2]\n'), r"{p}:2: expected a JSON object, found an array"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_readers_name_the_file_and_line(tmp_path, fault):
    make, message = FAULTS[fault]
    path = tmp_path / "data.jsonl"
    if make is None:  # a path through a file: the OS refuses to read it (as root, modes do not)
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "data.jsonl"
    else:
        make(path)
    with pytest.raises(ConfigError, match=message.format(p=path)):
        read_jsonl(path, ConfigError, dict)


def test_json_files_of_the_wrong_type_and_missing_ones(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("[1]")
    with pytest.raises(ConfigError, match=f"{path}: expected a JSON object, found an array"):
        read_json(path, ConfigError)
    with pytest.raises(ConfigError, match=f"recipe {tmp_path / 'nope.yml'} does not exist"):
        read_text(tmp_path / "nope.yml", ConfigError, what="recipe")


@pytest.fixture
def broken(zoo, tmp_path):
    """A project whose files a test breaks one at a time: returns (recipe, its folder)."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    shutil.copyfile(zoo.dev, root / "data" / "dev.jsonl")
    experts = [shutil.copytree(e, root / "experts" / e.name) for e in zoo.full[:2]]
    utility = {"type": "nll", "dev": "data/dev.jsonl", "batch_size": 16}
    recipe = write_recipe(root, experts, utility=utility, swarm={"max_iterations": 1})
    return recipe, root


def one_line_error(args: list) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_a_data_file_that_is_not_utf8(broken, tmp_path):
    recipe, root = broken
    (root / "data" / "dev.jsonl").write_bytes(b'{"prompt": "caf\xe9 au lait", "answer": "x"}\n')
    line = one_line_error([recipe, tmp_path / "out"])
    assert f"{root / 'data' / 'dev.jsonl'}:1: not UTF-8 text" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_recipe_that_is_not_utf8(broken, tmp_path):
    recipe, _ = broken
    recipe.write_bytes(recipe.read_bytes() + b"# r\xe9sum\xe9\n")
    assert "not UTF-8 text" in one_line_error([recipe, tmp_path / "out"])


def test_a_weights_index_whose_map_is_not_an_object_or_escapes_its_folder(broken, tmp_path):
    recipe, root = broken
    index = root / "experts" / "reverse" / "model.safetensors.index.json"  # the zoo's first full expert is sharded
    good = json.loads(index.read_text())
    index.write_text(json.dumps({**good, "weight_map": ["model-00001-of-00002.safetensors"]}))
    assert f"{index}: 'weight_map' must be a JSON object, found an array" in one_line_error([recipe, tmp_path / "out"])
    name = next(iter(good["weight_map"]))
    for escape in ("../../../data/dev.jsonl", str(root / "data" / "dev.jsonl")):
        index.write_text(json.dumps({**good, "weight_map": {**good["weight_map"], name: escape}}))
        line = one_line_error([recipe, tmp_path / "out"])
        assert f"tensor {name!r} is mapped to {escape!r}, which is not a file name in" in line


def test_a_corrupt_adapter_config(zoo, tmp_path):
    expert = shutil.copytree(zoo.lora[0], tmp_path / "expert")
    (expert / "adapter_config.json").write_text('{"peft_type": "LORA",')
    recipe = write_recipe(tmp_path, [expert, zoo.lora[1]], base=zoo.base, utility={"type": "nll", "dev": str(zoo.dev)})
    assert f"{expert / 'adapter_config.json'}: invalid JSON" in one_line_error([recipe, tmp_path / "out"])
    (expert / "adapter_config.json").write_text("[]")
    assert f"{expert / 'adapter_config.json'}: expected a JSON object" in one_line_error([recipe, tmp_path / "out"])


def test_parameters_that_are_not_a_mapping(zoo, tmp_path):
    recipe = tmp_path / "weights.yml"
    models = "".join(f"  - model: {e}\n    parameters: {{weight: 0.5}}\n" for e in zoo.full[:2])
    recipe.write_text(f"merge_method: linear\nparameters: [normalize, false]\nmodels:\n{models}")
    line = one_line_error(["apply", recipe, tmp_path / "out"])
    assert line == f"error: {recipe}: parameters: must be a mapping (e.g. normalize: false)"


@pytest.mark.parametrize("state", ["[]", '{"format": 3}', "{not json"])
def test_a_resume_state_that_cannot_be_read(broken, tmp_path, state):
    recipe, _ = broken
    partial = tmp_path / ".out.partial"
    partial.mkdir()
    (partial / "swarm_state.json").write_text(state)
    line = one_line_error([recipe, tmp_path / "out", "--resume"])
    assert str(partial / "swarm_state.json") in line and line.endswith("pass --overwrite to discard that run")
    assert (partial / "swarm_state.json").read_text() == state  # kept until the user says otherwise


def test_a_result_file_that_cannot_be_read(broken, tmp_path):
    recipe, _ = broken
    out = tmp_path / "out"
    assert CliRunner().invoke(main, [str(recipe), str(out), "--quiet"]).exit_code == 0
    (out / "swarm_result.json").write_text('{"experts": []}')
    line = one_line_error([recipe, out, "--resume"])  # a finished run: its result is read back
    assert line == f"error: {out / 'swarm_result.json'}: not a run's result (missing key 'expert_dev')"
