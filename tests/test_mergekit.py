"""mergekit integration: registry, `mergekit-yaml` through the start-up hook, vanilla recipes.

The hook is tested as users get it: the wheel is built and pip-installed into a scratch
venv (which sees this environment's torch/mergekit through a path file), and the real
`mergekit-yaml` entry point runs there in subprocesses. "Stock mergekit" is the same
venv with MERGEKIT_SWARM_DISABLE_HOOK=1: nothing of ours is imported then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mergekit_swarm.commands.apply import apply_recipe
from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.testing import toy
from tests.helpers import assert_same_tensors, tensors, write_recipe

REPO = Path(__file__).resolve().parents[1]
QUIET = RunOptions(quiet=True)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def wide(tmp_path_factory, zoo):
    """Three full experts of a 12-layer model (tensor names with both `layers.1.` and
    `layers.11.`, tied embeddings: no lm_head in the files), random perturbations of one
    random init."""
    root = tmp_path_factory.mktemp("wide")
    tokenizer = toy.build_char_tokenizer()
    experts = []
    for k in range(3):
        model = toy.build_tiny_llama(len(tokenizer), seed=0, hidden_size=16, layers=12, tie_embeddings=True)
        generator = torch.Generator().manual_seed(k + 1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        model.save_pretrained(root / f"expert{k}")
        tokenizer.save_pretrained(root / f"expert{k}")
        experts.append(root / f"expert{k}")
    assert "lm_head.weight" not in load_file(str(root / "expert0" / "model.safetensors"))
    # Smallest weight norm wins: averaging the experts' random perturbations lowers it, so the
    # winner is a real per-tensor mixture, not one of the experts.
    (root / "norm.py").write_text(
        "def score(model, tokenizer):\n    return -sum(float(p.double().pow(2).sum()) for p in model.parameters())\n"
    )
    recipe = {
        "merge_method": "model_swarms",
        "models": [{"model": f"expert{k}"} for k in range(3)],
        "swarm": {
            "particles": 4,
            "max_iterations": 2,
            "patience": 5,
            "granularity": "tensor",
            "seed": 3,
            "initial": "experts",
        },  # per-tensor coefficients that differ (merges: the soup wins),
        "utility": {"type": "python", "function": "norm.py:score"},
    }
    (root / "swarm.yml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A scratch venv with this package pip-installed from a freshly built wheel."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    outer = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    Path(purelib, "_outer_env.pth").write_text("\n".join(outer) + "\n")  # torch, mergekit, pip, hatchling
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--ignore-installed",
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    assert Path(purelib, "mergekit_swarm.pth").exists()
    # mergekit's console script, as pip writes it, bound to this venv's interpreter
    script = root / "bin" / "mergekit-yaml"
    script.write_text(f"#!{python}\nimport sys\nfrom mergekit.scripts.run_yaml import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return root


def run_in(venv: Path, *args: str, hook: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MERGEKIT_SWARM_DISABLE_HOOK"}
    env["HF_HUB_OFFLINE"] = "1"
    if not hook:
        env["MERGEKIT_SWARM_DISABLE_HOOK"] = "1"
    # never the repository as working directory: `python -c` would import the checkout, not the venv's copy
    cwd = cwd or venv
    return subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------ registry (in process)
def test_model_swarms_is_registered_and_is_unnormalised_linear():
    from mergekit.card import method_md
    from mergekit.merge_methods import get, merge_tensors

    import mergekit_swarm  # noqa: F401  (arms the registration)

    method = get("model_swarms")
    assert (method.spec.pretty_name, method.spec.reference_url) == ("Model Swarms", "https://arxiv.org/abs/2410.11163")
    assert method_md("model_swarms") == "[Model Swarms](https://arxiv.org/abs/2410.11163)"
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(7, 5, generator=gen).to(torch.bfloat16) for _ in range(3)]
    weights = [0.9, 0.4, -0.55]  # affine-ish, negative, not normalised
    ours = merge_tensors(inputs, "model_swarms", parameters={"weight": weights})
    linear = merge_tensors(inputs, "linear", parameters={"weight": weights, "normalize": False})
    assert torch.equal(ours, linear)
    assert not torch.equal(ours, merge_tensors(inputs, "linear", parameters={"weight": weights}))


# ------------------------------------------------------------------ the hook in a real venv
def test_hook_costs_no_heavy_imports_and_has_an_off_switch(venv, wide):
    probe = "import sys; print(sorted({'torch', 'mergekit'} & set(sys.modules)), [type(f).__name__ for f in sys.meta_path][0])"
    on = run_in(venv, venv / "bin/python", "-c", probe)
    assert on.returncode == 0 and on.stdout.split() == ["[]", "MergekitFinder"], on.stderr
    off = run_in(venv, venv / "bin/python", "-c", probe, hook=False)
    assert "MergekitFinder" not in off.stdout
    stock = run_in(venv, venv / "bin/mergekit-yaml", wide / "swarm.yml", wide / "never", hook=False, cwd=wide)
    assert stock.returncode != 0 and "Unimplemented merge method model_swarms" in stock.stderr
    assert not (wide / "never" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def yaml_run(venv, wide) -> Path:
    """`mergekit-yaml swarm.yml out/` in the venv, through the hook."""
    out = wide / "out_yaml"
    result = run_in(venv, venv / "bin/mergekit-yaml", wide / "swarm.yml", out, "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def test_mergekit_yaml_runs_the_same_search_as_mergekit_swarm(venv, wide, yaml_run):
    out = wide / "out_swarm"
    result = run_in(venv, venv / "bin/mergekit-swarm", wide / "swarm.yml", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert_same_tensors(yaml_run, out)
    ours, theirs = (json.loads((d / "swarm_result.json").read_text()) for d in (out, yaml_run))
    assert ours["coefficients"] == theirs["coefficients"] and len(ours["groups"]) == len(tensors(out))
    assert ours["winner_dev"] > max(ours["expert_dev"])  # a real mixture won


def test_stock_mergekit_reproduces_the_vanilla_recipe_bit_for_bit(venv, wide, yaml_run):
    recipe = yaml.safe_load((yaml_run / "mergekit_config.yml").read_text())
    assert recipe["merge_method"] == "linear" and recipe["parameters"] == {"normalize": False}
    filters = [entry["filter"] for entry in recipe["models"][0]["parameters"]["weight"]]
    assert "model.layers.1.mlp.up_proj.weight" in filters and "model.layers.11.mlp.up_proj.weight" in filters
    for i, name in enumerate(filters):  # no filter shadows a later tensor's own entry
        assert not any(earlier in name for earlier in filters[:i]), name
    values = {e["filter"]: e["value"] for e in recipe["models"][0]["parameters"]["weight"]}
    assert values["model.layers.1.mlp.up_proj.weight"] != values["model.layers.11.mlp.up_proj.weight"]

    repro = wide / "repro"
    result = run_in(venv, venv / "bin/mergekit-yaml", yaml_run / "mergekit_config.yml", repro, "--quiet", hook=False)
    assert result.returncode == 0, result.stderr
    assert_same_tensors(yaml_run, repro)


def test_the_winner_combines_with_stock_slerp(venv, wide, yaml_run):
    slerp = {
        "merge_method": "slerp",
        "base_model": str(yaml_run),
        "models": [{"model": str(yaml_run)}, {"model": str(wide / "expert0")}],
        "parameters": {"t": 0.5},
        "dtype": "float32",
    }
    (wide / "slerp.yml").write_text(yaml.safe_dump(slerp))
    result = run_in(venv, venv / "bin/mergekit-yaml", wide / "slerp.yml", wide / "slerped", "--quiet", hook=False)
    assert result.returncode == 0, result.stderr
    merged, winner, expert = tensors(wide / "slerped"), tensors(yaml_run), tensors(wide / "expert0")
    name = "model.layers.11.mlp.up_proj.weight"
    assert merged.keys() == winner.keys()
    assert not torch.equal(merged[name], winner[name]) and not torch.equal(merged[name], expert[name])


def test_one_shot_model_swarms_recipe_in_mergekit_yaml(venv, wide):
    from mergekit_swarm.experts import open_pool
    from mergekit_swarm.experts.groups import group_layout
    from mergekit_swarm.weights.kernels import combine

    weights = [0.9, 0.4, -0.3]
    recipe = {
        "merge_method": "model_swarms",
        "models": [{"model": str(wide / f"expert{k}"), "parameters": {"weight": w}} for k, w in enumerate(weights)],
    }
    (wide / "oneshot.yml").write_text(yaml.safe_dump(recipe))
    result = run_in(venv, venv / "bin/mergekit-yaml", wide / "oneshot.yml", wide / "oneshot", "--quiet")
    assert result.returncode == 0, result.stderr
    card = (wide / "oneshot" / "README.md").read_text()
    assert "[Model Swarms](https://arxiv.org/abs/2410.11163)" in card  # mergekit's own card names the method
    pool = open_pool([wide / f"expert{k}" for k in range(3)])
    expected = dict(combine(pool, group_layout(pool, "model"), np.array([weights])))
    merged = tensors(wide / "oneshot")
    assert merged.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(merged[name], tensor), name


def test_hooked_mergekit_yaml_leaves_other_recipes_alone(venv, wide):
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(wide / f"expert{k}"), "parameters": {"weight": w}} for k, w in enumerate([0.2, 0.3, 0.5])],
    }
    text = yaml.safe_dump(recipe)
    (wide / "plain.yml").write_text(text)
    hooked = run_in(venv, venv / "bin/mergekit-yaml", wide / "plain.yml", wide / "plain_hooked", "--quiet")
    stock = run_in(venv, venv / "bin/mergekit-yaml", wide / "plain.yml", wide / "plain_stock", "--quiet", hook=False)
    assert hooked.returncode == stock.returncode == 0, hooked.stderr + stock.stderr
    assert_same_tensors(wide / "plain_hooked", wide / "plain_stock")
    piped = subprocess.run(  # a recipe on stdin is read once, by mergekit
        [str(venv / "bin/mergekit-yaml"), "/dev/stdin", str(wide / "plain_piped"), "--quiet"],
        input=text,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=venv,
        timeout=600,
    )
    assert piped.returncode == 0, piped.stderr
    assert_same_tensors(wide / "plain_piped", wide / "plain_stock")
    misuse = run_in(venv, venv / "bin/mergekit-yaml", wide / "plain.yml", wide / "plain_resume", "--resume")
    assert misuse.returncode == 2 and "--resume only apply to model_swarms search recipes" in misuse.stderr


def test_a_broken_plugin_is_a_warning_not_a_broken_mergekit(venv, tmp_path):
    fake = tmp_path / "fake"  # a mergekit_swarm whose plugin fails to import
    (fake / "mergekit_swarm").mkdir(parents=True)
    (fake / "mergekit_swarm" / "__init__.py").write_text("")
    (fake / "mergekit_swarm" / "mergekit_plugin.py").write_text("raise ImportError('simulated breakage')\n")
    env = {**os.environ, "PYTHONPATH": str(fake), "HF_HUB_OFFLINE": "1"}
    probe = "import mergekit.merge_methods as m; print('linear' in [x.spec.name for x in m.registered_methods()])"
    result = subprocess.run(
        [str(venv / "bin/python"), "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
    assert "mergekit-swarm could not extend mergekit.merge_methods (ImportError: simulated breakage)" in result.stderr


# ------------------------------------------------------------------ apply, recipes, tokenizers (in process)
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_apply_rebuilds_the_winner_bit_for_bit(recipe_factory, tmp_path, kind):
    out = tmp_path / "out"
    run_swarm(load_recipe(recipe_factory(kind, swarm={"granularity": "tensor"})), out, QUIET)
    again = apply_recipe(out / "mergekit_config.yml", tmp_path / "again", QUIET)
    weights = "adapter_model.safetensors" if kind == "lora" else "model.safetensors"
    assert (again / weights).read_bytes() == (out / weights).read_bytes()
    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert recipe["merge_method"] == ("model_swarms" if kind == "lora" else "linear")
    card = (again / "README.md").read_text()
    for section in ("## Merge Details", "### Merge Method", "### Models Merged", "### Configuration"):
        assert section in card


def test_experts_may_be_outputs_of_earlier_mergekit_merges(venv, wide, zoo, tmp_path):
    earlier = {
        "merge_method": "linear",
        "models": [
            {"model": str(wide / "expert0"), "parameters": {"weight": 0.5}},
            {"model": str(wide / "expert1"), "parameters": {"weight": 0.5}},
        ],
    }
    (tmp_path / "earlier.yml").write_text(yaml.safe_dump(earlier))
    result = run_in(venv, venv / "bin/mergekit-yaml", tmp_path / "earlier.yml", tmp_path / "merged", "--quiet", hook=False)
    assert result.returncode == 0, result.stderr
    recipe = yaml.safe_load((wide / "swarm.yml").read_text())
    recipe["models"] = [{"model": str(tmp_path / "merged")}, {"model": str(wide / "expert2")}]
    recipe["swarm"]["max_iterations"] = 1
    recipe["utility"] = {"type": "nll", "dev": str(zoo.dev), "batch_size": 16}
    (tmp_path / "swarm.yml").write_text(yaml.safe_dump(recipe))
    summary = run_swarm(load_recipe(tmp_path / "swarm.yml"), tmp_path / "out", QUIET)
    assert summary.experts == ["merged", "expert2"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekit_swarm.utilities.data import load_examples
    from mergekit_swarm.utilities.nll import NegativeLoss

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    direct = NegativeLoss(load_examples(zoo.dev), batch_size=16)(merged, AutoTokenizer.from_pretrained(tmp_path / "merged"))
    assert summary.expert_dev[0] == pytest.approx(direct, rel=1e-6)  # the swarm saw the merge as mergekit wrote it


def test_card_follows_mergekit_and_never_asks_the_hub(zoo, tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the card must not call the Hub")

    monkeypatch.setattr(huggingface_hub, "repo_exists", no_network)
    folder = tmp_path / "project"  # relative model paths (what makes mergekit's card ask the Hub) ...
    folder.mkdir()
    for name, path in [("base", zoo.base), *((f"e{k}", p) for k, p in enumerate(zoo.lora))]:
        (folder / name).symlink_to(path)
    recipe = write_recipe(folder, ["e0", "e1", "e2"], base="base", utility={"type": "nll", "dev": str(zoo.dev)})
    monkeypatch.chdir(tmp_path)  # ... and a working directory where they do not exist
    out = tmp_path / "out"
    run_swarm(load_recipe(recipe), out, QUIET)
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front == {"library_name": "peft", "tags": ["merge", "mergekit", "model-swarms"]}  # local models: no base_model key
    sections = [
        "## Merge Details",
        "### Merge Method",
        "### Models Merged",
        "### Configuration",
        "## Swarm search",
        "### Result",
        "## Citation",
    ]
    positions = [card.index(s) for s in sections]
    assert positions == sorted(positions)
    assert "[Model Swarms](https://arxiv.org/abs/2410.11163) merge method using" in card
    assert "Stock mergekit cannot" in card


def test_chat_template_and_tokenizer_source_keep_mergekit_meaning(zoo, recipe_factory, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    run_swarm(load_recipe(recipe_factory("full", chat_template="chatml", tokenizer_source="union")), out, QUIET)
    template = AutoTokenizer.from_pretrained(out).chat_template
    assert template is not None and "<|im_start|>" in template
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["chat_template"] == "chatml"

    other = tmp_path / "other_tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(zoo.base)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    (other / "config.json").write_text("{}")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for k, expert in enumerate(zoo.full[:2]):
        (folder / f"e{k}").symlink_to(expert)
    (folder / "e2").mkdir()
    for item in zoo.full[2].iterdir():
        (folder / "e2" / item.name).symlink_to(item)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / "e2" / name).unlink()
        (folder / "e2" / name).symlink_to(other / name)
    recipe = write_recipe(
        tmp_path / "r",
        [folder / "e0", folder / "e1", folder / "e2"],
        tokenizer_source="union",
        utility={"type": "nll", "dev": str(zoo.dev)},
    )
    with pytest.raises(ExpertError, match="union of different vocabularies"):
        run_swarm(load_recipe(recipe), tmp_path / "out2", QUIET)


def test_weights_resolve_as_mergekit_resolves_them(zoo, tmp_path):
    from mergekit.config import MergeConfiguration

    from mergekit_swarm.core.errors import ConfigError
    from mergekit_swarm.experts import open_pool
    from mergekit_swarm.output.mergekit_config import recipe_coefficients

    pool = open_pool(list(zoo.full))
    head = "lm_head.weight"
    config = MergeConfiguration.model_validate(
        {
            "merge_method": "model_swarms",
            "parameters": {"weight": 0.25},  # top level: used where a model's own filters match nothing
            "models": [
                {"model": str(zoo.full[0]), "parameters": {"weight": [{"filter": "lm_head", "value": 2.0}]}},
                {"model": str(zoo.full[1]), "parameters": {"weight": [{"filter": "mlp", "value": -1.0}, {"value": 0.5}]}},
                {"model": str(zoo.full[2])},
            ],
        }
    )
    layout, coefficients = recipe_coefficients(config, pool, "r")
    row = pool.tensor_names.index(head)
    mlp = pool.tensor_names.index("model.layers.0.mlp.up_proj.weight")
    assert list(coefficients[row]) == [2.0, 0.5, 0.25]
    assert list(coefficients[mlp]) == [0.25, -1.0, 0.25]
    gradient = config.model_copy(update={"parameters": {"weight": ["0.1", "0.9"]}})
    with pytest.raises(ConfigError, match="gradient weights"):
        recipe_coefficients(gradient, pool, "r")
