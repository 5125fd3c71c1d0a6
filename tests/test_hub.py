"""The Hub, with the real huggingface_hub client against a fake Hub at the HTTP level."""

from __future__ import annotations

import hashlib
import logging
import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner

from mergekit_swarm.cli import main
from mergekit_swarm.commands.run import run_swarm
from mergekit_swarm.config import load_recipe
from mergekit_swarm.core.errors import ExpertError
from mergekit_swarm.core.names import OUTPUT_MARKER, STATE_FILE
from mergekit_swarm.core.run_options import RunOptions
from mergekit_swarm.hub import HubError, HubModel, PushRequest, download, push
from tests.fake_hub import FakeHub
from tests.helpers import write_recipe

TOKEN = "hf_fake_Secret_Token_0123456789"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants
    from huggingface_hub.utils import _http

    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake.install(monkeypatch)
    yield fake
    _http.set_client_factory(_http.default_client_factory)
    _http.close_session()


def serve(fake: FakeHub, repo: str, folder, **extra: bytes) -> None:
    fake.repos[repo] = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} | extra


def snapshot(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


@pytest.fixture
def hub_lora_run(hub, zoo, tmp_path):
    """A LoRA swarm whose base and experts come from the fake Hub by repo id."""
    serve(hub, "org/base", zoo.base)
    for k, path in enumerate(zoo.lora):
        serve(hub, f"org/lora{k}", path, **{"pytorch_model.bin": b"pickle", "training_args.bin": b"pickle"})
    recipe = write_recipe(
        tmp_path / "recipe", ["org/lora0", "org/lora1", "org/lora2"], utility={"type": "nll", "dev": str(zoo.dev)}
    )
    data = yaml.safe_load(recipe.read_text())
    data["base_model"] = "org/base"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    result = run_swarm(load_recipe(recipe), out, RunOptions(quiet=True))
    return hub, recipe, out, result


def test_experts_by_repo_id_fetch_only_what_a_swarm_reads(hub_lora_run):
    hub, _, out, result = hub_lora_run
    fetched = {path.rsplit("/", 1)[1] for path in hub.paths("GET") if "/resolve/" in path}
    assert fetched == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    }
    assert not any(p.endswith(".bin") for p in hub.paths())  # pickles never even asked for
    assert result.experts == ["org/lora0", "org/lora1", "org/lora2"]
    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())  # portable: Hub ids, not cache paths
    assert recipe["base_model"] == "org/base" and [m["model"] for m in recipe["models"]] == [
        "org/lora0",
        "org/lora1",
        "org/lora2",
    ]
    import json

    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base"


def test_adapter_card_names_its_base_and_push_leaves_the_state_out(hub_lora_run):
    hub, _, out, _ = hub_lora_run
    before = snapshot(out)
    url = push(PushRequest(out, "org/winner", private=True, commit_message="swarm winner"))
    assert url.endswith("/commit/" + "a" * 40)
    create = next(r for r in hub.requests if r.path == "/api/repos/create")
    assert create.json()["name"] == "winner" and create.json()["organization"] == "org"
    assert create.json()["visibility"] == "private"
    assert create.headers["authorization"] == f"Bearer {TOKEN}"  # the standard token source was used
    commit = hub.commits[-1]
    assert set(commit["files"]) == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "generation_config.json",
        "mergekit_config.yml",
        "swarm.yml",
        "swarm_history.jsonl",
        "swarm_history.png",
        "swarm_result.json",
        "tokenizer.json",
        "tokenizer_config.json",
        OUTPUT_MARKER,
    }  # everything but swarm_state.json
    assert commit["header"]["summary"] == "swarm winner"
    card = commit["files"]["README.md"].decode()
    assert front_matter(card) == {"base_model": "org/base", "library_name": "peft", "tags": ["merge", "mergekit", "model-swarms"]}
    for section in ("![search history](swarm_history.png)", "| **swarm winner** |", "```yaml", "@inproceedings{feng2025model"):
        assert section in card
    assert "[org/lora1](https://huggingface.co/org/lora1)" in card
    assert snapshot(out) == before  # the local folder is only read

    push(PushRequest(out, "org/winner", include_state=True))
    assert "swarm_state.json" in hub.commits[-1]["files"]


def test_full_model_card_lists_hub_experts_as_a_merge(hub, zoo, tmp_path):
    for k, path in enumerate(zoo.full):
        serve(hub, f"org/full{k}", path)
    recipe = write_recipe(
        tmp_path / "r",
        ["org/full0", "org/full1"],
        utility={"type": "nll", "dev": str(zoo.dev)},
        swarm={"particles": 2, "max_iterations": 1},
    )
    out = tmp_path / "out"
    run_swarm(load_recipe(recipe), out, RunOptions(quiet=True))
    assert front_matter((out / "README.md").read_text()) == {
        "base_model": ["org/full0", "org/full1"],
        "base_model_relation": "merge",
        "library_name": "transformers",
        "tags": ["merge", "mergekit", "model-swarms"],
    }


def test_push_retries_server_errors_then_says_how_to_retry(hub_lora_run):
    hub, _, out, _ = hub_lora_run
    hub.fail["commit"] = [503, 503]
    push(PushRequest(out, "org/winner"), backoff=0.01)
    assert len([p for p in hub.paths("POST") if p.endswith("/commit/main")]) == 3  # two 503s, then success
    hub.fail["commit"] = [503] * 4
    before = snapshot(out)
    with pytest.raises(HubError) as err:
        push(PushRequest(out, "org/winner", include_state=True, revision="v2"), attempts=4, backoff=0.01)
    message = str(err.value)
    assert "failed after 4 attempts (HTTP 503)" in message and f"{out} is unchanged" in message
    assert message.endswith(f"retry with: mergekit-swarm push {out} org/winner --include-state --revision v2")
    hub.fail["commit"] = [429, 0]  # rate limited, then a dropped connection: both retried
    push(PushRequest(out, "org/winner"), backoff=0.01)
    assert hub.commits[-1]["repo"] == "org/winner"
    hub.fail["commit"] = [403]
    with pytest.raises(HubError, match=r"not allowed to write to org/winner \(HTTP 403\): log in"):
        push(PushRequest(out, "org/winner"), backoff=0.01)
    assert snapshot(out) == before and out.is_dir()


def test_push_unauthorised_names_the_repo_and_how_to_log_in(hub_lora_run, caplog, capsys):
    hub, _, out, _ = hub_lora_run
    caplog.set_level(logging.DEBUG)
    hub.fail["create"] = [401]
    result = CliRunner().invoke(main, ["push", str(out), "org/winner"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: not allowed to write to org/winner (HTTP 401): log in with `hf auth login`, "
        "or set HF_TOKEN to a token with write access"
    )
    captured = capsys.readouterr()
    assert TOKEN not in result.output + result.stderr + caplog.text + captured.out + captured.err
    assert not hub.commits


def test_run_with_push_to_hub_pushes_after_the_search(hub, zoo, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    recipe = write_recipe(
        tmp_path / "r", zoo.full[:2], utility={"type": "nll", "dev": str(zoo.dev)}, swarm={"particles": 2, "max_iterations": 1}
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(recipe), str(out), "--push-to-hub", "org/pushed", "--commit-message", "hello"])
    assert result.exit_code == 0, result.output
    assert "pushed" in result.stdout and hub.commits[-1]["repo"] == "org/pushed"
    assert hub.commits[-1]["header"]["summary"] == "hello" and "swarm_state.json" not in hub.commits[-1]["files"]
    assert TOKEN not in result.output + result.stderr + caplog.text


def test_missing_gated_and_offline_repos_fail_in_one_line_before_any_work(hub, zoo, tmp_path, monkeypatch):
    serve(hub, "org/base", zoo.base)
    recipe = write_recipe(
        tmp_path / "r", ["org/missing", str(zoo.lora[0])], base="org/base", utility={"type": "nll", "dev": str(zoo.dev)}
    )
    with pytest.raises(
        ExpertError,
        match=r"models\[0\]: Hub repo org/missing not found \(if it is private, log in .* no local folder .*r/org/missing either",
    ):
        run_swarm(load_recipe(recipe), tmp_path / "out", RunOptions(quiet=True))
    assert not (tmp_path / ".out.partial").exists()

    hub.fail["info"] = [403]
    original = hub._maybe_fail

    def gated(route):
        response = original(route)
        if response is not None and response.status_code == 403:
            response.headers["X-Error-Code"] = "GatedRepo"
        return response

    monkeypatch.setattr(hub, "_maybe_fail", gated)
    with pytest.raises(ExpertError, match="org/base is gated: accept its conditions on https://huggingface.co/org/base"):
        download(HubModel("org/base"), where="base_model")

    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ExpertError, match="org/other is not in the local Hugging Face cache"):
        download(HubModel("org/other"), where="models[1]")


def test_offline_from_the_cache(hub, zoo, monkeypatch):
    import huggingface_hub.constants as constants

    serve(hub, "org/full0", zoo.full[1])
    online = download(HubModel("org/full0"), where="models[0]")
    hub.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert download(HubModel("org/full0"), where="models[0]") == online and not hub.requests


def test_adapter_trained_on_another_base_is_refused(hub, zoo, tmp_path):
    import json

    serve(hub, "org/base", zoo.base)
    config = json.loads((zoo.lora[0] / "adapter_config.json").read_text())
    serve(
        hub,
        "org/stray",
        zoo.lora[0],
        **{"adapter_config.json": json.dumps({**config, "base_model_name_or_path": "org/other-base"}).encode()},
    )
    serve(
        hub,
        "org/good",
        zoo.lora[1],
        **{
            "adapter_config.json": json.dumps(
                {**json.loads((zoo.lora[1] / "adapter_config.json").read_text()), "base_model_name_or_path": "org/base"}
            ).encode()
        },
    )
    recipe = write_recipe(
        tmp_path / "r", ["org/good", "org/stray"], base="org/base", utility={"type": "nll", "dev": str(zoo.dev)}
    )
    with pytest.raises(ExpertError, match=r"models\[1\]: this adapter was trained on org/other-base, but base_model is org/base"):
        run_swarm(load_recipe(recipe), tmp_path / "out", RunOptions(quiet=True))


def test_allow_pickle_reads_weights_only_pickles(zoo, tmp_path):
    from safetensors.torch import load_file

    from mergekit_swarm.experts import open_pool

    pickled = tmp_path / "pickled"
    shutil.copytree(zoo.full[1], pickled)
    tensors = load_file(str(pickled / "model.safetensors"))
    (pickled / "model.safetensors").unlink()
    torch.save(tensors, pickled / "pytorch_model.bin")
    with pytest.raises(ExpertError, match="pass --allow-pickle"):
        open_pool([zoo.full[1], pickled])
    pool = open_pool([zoo.full[1], pickled], allow_pickle=True)
    for name in pool.tensor_names:
        assert torch.equal(pool.tensor(0, name), pool.tensor(1, name))


def test_pinned_revisions_stay_pinned_and_loadable(hub, zoo, tmp_path):
    import json

    serve(hub, "org/base", zoo.base)
    for k, path in enumerate(zoo.lora[:2]):
        serve(hub, f"org/lora{k}", path)
    recipe = write_recipe(
        tmp_path / "r",
        ["org/lora0", "org/lora1@v3"],
        base="org/base@v1",
        utility={"type": "nll", "dev": str(zoo.dev)},
        swarm={"particles": 2, "max_iterations": 1},
    )
    out = tmp_path / "out"
    run_swarm(load_recipe(recipe), out, RunOptions(quiet=True))
    assert "/api/models/org/base/revision/v1" in hub.paths("GET") and "/api/models/org/lora1/revision/v3" in hub.paths("GET")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == ("org/base", "v1")  # what PEFT can load
    winner = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert winner["base_model"] == "org/base@v1" and winner["models"][1]["model"] == "org/lora1@v3"  # mergekit's syntax


def test_push_to_a_branch_and_private_only_when_possible(hub_lora_run):
    hub, _, out, _ = hub_lora_run
    push(PushRequest(out, "org/branched", revision="v2"))
    assert "/api/models/org/branched/branch/v2" in hub.paths("POST")
    assert hub.commits[-1]["revision"] == "v2"
    with pytest.raises(HubError, match="org/branched already exists and is public; --private does not change that"):
        push(PushRequest(out, "org/branched", private=True))
    push(PushRequest(out, "org/secret", private=True))
    assert hub.private["org/secret"] is True


def test_allow_pickle_also_fetches_pickled_weights_from_the_hub(hub, zoo, tmp_path):
    from safetensors.torch import load_file

    tensors = load_file(str(zoo.full[1] / "model.safetensors"))
    pickled = tmp_path / "pickled.bin"
    torch.save(tensors, pickled)
    files = {p.name: p.read_bytes() for p in zoo.full[1].iterdir() if p.suffix != ".safetensors"}
    hub.repos["org/pickled"] = files | {
        "pytorch_model.bin": pickled.read_bytes(),
        "training_args.bin": b"x",
        "optimizer.pt": b"x",
    }
    with pytest.raises(ExpertError, match="org/pickled has no safetensors weights; if it has pickled .* pass --allow-pickle"):
        download(HubModel("org/pickled"), where="models[0]")
    folder = download(HubModel("org/pickled"), where="models[0]", allow_pickle=True)
    assert (folder / "pytorch_model.bin").exists()
    fetched = {path.rsplit("/", 1)[1] for path in hub.paths("GET") if "/resolve/" in path}
    assert "training_args.bin" not in fetched and "optimizer.pt" not in fetched


def test_the_token_never_shows_even_in_debug_logs(hub_lora_run, monkeypatch, caplog, capfd):
    import huggingface_hub.constants as constants
    from huggingface_hub.utils import logging as hub_logging

    hub, _, out, _ = hub_lora_run
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub then logs every request as a curl command
    previous = hub_logging.get_verbosity()
    hub_logging.set_verbosity_debug()
    caplog.set_level(logging.DEBUG)
    try:
        push(PushRequest(out, "org/debugged"))
    finally:
        hub_logging.set_verbosity(previous)
    logs = caplog.text + "".join(capfd.readouterr())
    assert "curl" in logs and "<TOKEN>" in logs and TOKEN not in logs


def test_cli_reports_a_missing_repo_in_one_line(hub, zoo, tmp_path):
    recipe = write_recipe(tmp_path / "r", ["org/missing", "org/also-missing"], utility={"type": "nll", "dev": str(zoo.dev)})
    result = CliRunner().invoke(main, [str(recipe), str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "models[0]: Hub repo org/missing not found" in result.stderr
    bad = CliRunner().invoke(main, [str(recipe), str(tmp_path / "out"), "--push-to-hub", "not a repo"])
    assert bad.exit_code == 1 and "not a valid Hub repo id" in bad.stderr and not (tmp_path / ".out.partial").exists()


def test_every_command_fetches_code_files_only_with_trust_remote_code(hub, zoo, tmp_path):
    """One resolution of Hub models for run, apply and compare: `apply --trust-remote-code` once
    ignored the flag and fetched no code files."""
    from mergekit_swarm.commands.apply import apply_recipe

    for k in range(2):
        serve(hub, f"org/full{k}", zoo.full[k], **{"modeling_custom.py": b"# custom code\n"})
    recipe = tmp_path / "weights.yml"
    models = [{"model": f"org/full{k}", "parameters": {"weight": 0.5}} for k in range(2)]
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "parameters": {"normalize": False}, "models": models}))

    def fetched() -> set[str]:
        return {path.rsplit("/", 1)[1] for path in hub.paths("GET") if "/resolve/" in path}

    apply_recipe(recipe, tmp_path / "plain", RunOptions(quiet=True))
    assert "modeling_custom.py" not in fetched() and "config.json" in fetched()
    apply_recipe(recipe, tmp_path / "trusted", RunOptions(quiet=True, trust_remote_code=True))
    assert "modeling_custom.py" in fetched()


def test_push_refuses_a_folder_that_is_not_an_output_and_uploads_nothing(hub, tmp_path):
    """A project folder with a card, weights and a .env was once uploaded in full."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    (project / "model.safetensors").write_bytes(b"weights")
    (project / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    result = CliRunner().invoke(main, ["push", str(project), "org/project"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {project.resolve()} is not an output folder of mergekit-swarm (it has no {OUTPUT_MARKER}): push uploads "
        "only what run, apply or compare wrote; nothing was uploaded (use `hf upload` for other folders)"
    )
    assert not hub.requests and not hub.commits  # refused before even creating the repo
    with pytest.raises(HubError, match="is not an output folder of mergekit-swarm"):
        push(PushRequest(project, "org/project"))
    assert not hub.requests


def test_push_uploads_only_what_the_output_format_defines(hub_lora_run):
    hub, _, out, _ = hub_lora_run
    assert (out / OUTPUT_MARKER).is_file(), "run must mark its output folder"
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    (out / "notes.txt").write_text("my notes\n")
    (out / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (out / ".hidden.safetensors").write_bytes(b"x")
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "adapter_model.safetensors").write_bytes(b"an old copy")  # not the root-level weights
    (out / "checkpoint-1" / "model-00001-of-00002.safetensors").write_bytes(b"an old shard")
    (out / "checkpoint-1" / ".secret").write_text("x")

    push(PushRequest(out, "org/winner"))
    assert hub.uploaded("org/winner") == written - {STATE_FILE}

    result = CliRunner().invoke(main, ["push", str(out), "org/more", "--include", "notes.txt", "--include", "checkpoint-1"])
    assert result.exit_code == 0, result.output
    assert hub.uploaded("org/more") == written - {STATE_FILE} | {
        "notes.txt",
        "checkpoint-1/adapter_model.safetensors",
        "checkpoint-1/model-00001-of-00002.safetensors",
    }  # a named folder brings its files, but not its dotfiles
    push(PushRequest(out, "org/env", include=("*",)))
    assert ".env" not in hub.uploaded("org/env") and "notes.txt" in hub.uploaded("org/env")  # "*" is no name for a dotfile
    push(PushRequest(out, "org/named", include=(".env",)))
    assert ".env" in hub.uploaded("org/named")

    commits = len(hub.commits)
    typo = PushRequest(out, "org/winner", include=("note.txt",))
    with pytest.raises(HubError, match=rf"--include note.txt: no file in {out} matches it"):
        push(typo)
    assert len(hub.commits) == commits
    assert typo.command() == f"mergekit-swarm push {out} org/winner --include note.txt"


def test_push_retries_network_errors_and_reports_their_message(hub_lora_run):
    hub, _, out, _ = hub_lora_run
    hub.fail["commit"] = [503]
    push(PushRequest(out, "org/winner"), backoff=0.01)
    assert len([p for p in hub.paths("POST") if p.endswith("/commit/main")]) == 2  # a 503, then success

    hub.fail["commit"] = [0, 0]  # the network error is reported with its message, not only its type
    with pytest.raises(HubError, match=r"failed after 2 attempts \(ConnectError: fake: connection refused\)"):
        push(PushRequest(out, "org/winner"), attempts=2, backoff=0.01)


def test_push_surfaces_a_programming_error_at_once(hub_lora_run, monkeypatch):
    from huggingface_hub import HfApi

    _, _, out, _ = hub_lora_run
    calls = []

    def broken(self, **kwargs):
        calls.append(kwargs)
        raise ValueError("boom")

    monkeypatch.setattr(HfApi, "upload_folder", broken)
    with pytest.raises(ValueError, match="^boom$"):  # a programming error: at once, as it is
        push(PushRequest(out, "org/winner"), backoff=0.01)
    assert len(calls) == 1


def test_cards_of_local_models_name_no_base_model(zoo, tmp_path):
    """The Hub reads `base_model` as links to models: local paths, or mergekit's `[]`, are none."""
    lora = write_recipe(
        tmp_path / "lora",
        zoo.lora[:2],
        base=zoo.base,
        utility={"type": "nll", "dev": str(zoo.dev)},
        swarm={"particles": 2, "max_iterations": 1},
    )
    full = write_recipe(
        tmp_path / "full", zoo.full[1:], utility={"type": "nll", "dev": str(zoo.dev)}, swarm={"particles": 2, "max_iterations": 1}
    )
    tags = ["merge", "mergekit", "model-swarms"]
    run_swarm(load_recipe(lora), tmp_path / "lora-out", RunOptions(quiet=True))
    assert front_matter((tmp_path / "lora-out" / "README.md").read_text()) == {"library_name": "peft", "tags": tags}
    run_swarm(load_recipe(full), tmp_path / "full-out", RunOptions(quiet=True))
    assert front_matter((tmp_path / "full-out" / "README.md").read_text()) == {"library_name": "transformers", "tags": tags}


def test_the_hubs_own_cli_uploads_a_proper_repo_from_a_run(hub_lora_run, monkeypatch):
    """`hf upload org/name OUT --exclude swarm_state.json`, the command docs/hub.md gives, in-process
    so that it goes to the fake Hub."""
    import sys

    from huggingface_hub.cli.hf import main as hf_main
    from huggingface_hub.utils import logging as hub_logging

    hub, _, out, _ = hub_lora_run
    monkeypatch.setattr(sys, "argv", ["hf", "upload", "org/by-hf", str(out), "--exclude", STATE_FILE])
    previous = hub_logging.get_verbosity()  # the hf CLI makes huggingface_hub's logging verbose
    try:
        with pytest.raises(SystemExit) as done:
            hf_main()
    finally:
        hub_logging.set_verbosity(previous)
    assert done.value.code in (0, None)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert hub.uploaded("org/by-hf") == files - {STATE_FILE}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= hub.uploaded("org/by-hf")
    assert hub.repos["org/by-hf"]["README.md"] == (out / "README.md").read_bytes()


def test_docs_list_what_push_uploads():
    from pathlib import Path

    from mergekit_swarm.hub import TOKENIZER_FILES, push_allow_list

    docs = (Path(__file__).resolve().parents[1] / "docs" / "hub.md").read_text(encoding="utf-8")
    compressed = "svd-rank-*/"  # --svd-rank's copy of the winner: summarised as a folder
    for pattern in set(push_allow_list(include_state=True)) - set(TOKENIZER_FILES):  # tokenizer files: summarised
        if not pattern.startswith(compressed):
            assert f"`{pattern}`" in docs, f"docs/hub.md does not say that push uploads {pattern}"
    assert f"`{compressed}`" in docs
