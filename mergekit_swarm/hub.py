"""The Hugging Face Hub: experts and base models by repo id, and publishing a finished folder.

Downloads fetch only what a swarm reads (safetensors weights and index, configs,
tokenizer files); pickled weights only with `--allow-pickle`. With HF_HUB_OFFLINE=1 the
local cache is used. Pushing creates the repo if needed and uploads the folder as it is
(the resume state only with `--include-state`), with bounded retries on 5xx and
connection errors. The token comes from huggingface_hub's usual sources (HF_TOKEN, `hf
auth login`); nothing here reads, prints or logs it.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from mergekit_swarm.errors import ExpertError, SwarmError

ALLOWED_FILES = [
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
]
PICKLE_FILES = ["*.bin", "*.bin.index.json", "*.pt", "*.pth"]
STATE_FILES = ["swarm_state.json"]
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")


class HubError(SwarmError):
    """The Hub refused or could not be reached; the message says what to do."""


@dataclass(frozen=True)
class HubModel:
    """A model named by repo id in a recipe, resolved to a local snapshot before any work."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def looks_like_repo_id(text: str) -> bool:
    """`org/name`: not a relative (./, ../) or absolute path, exactly one slash."""
    return bool(_REPO_ID.match(text)) and not text.startswith(".")


def download(model: HubModel, *, where: str, allow_pickle: bool = False, cache_dir: str | None = None) -> Path:
    """The local snapshot folder of `model`, downloaded (or taken from the cache) with only the
    files a swarm reads. Every failure is one line naming the repo and what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = model.repo_id
    try:
        folder = snapshot_download(
            repo,
            revision=model.revision,
            allow_patterns=ALLOWED_FILES + (PICKLE_FILES if allow_pickle else []),
            cache_dir=cache_dir,
        )
    except GatedRepoError:
        raise ExpertError(
            f"{where}: {repo} is gated: accept its conditions on https://huggingface.co/{repo} and log in "
            "(`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ExpertError(f"{where}: Hub repo {repo} not found (or private: log in with `hf auth login` or HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ExpertError(f"{where}: {repo} has no revision {model.revision!r}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise ExpertError(
            f"{where}: {model} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE=1?): download it once online, or give a local folder"
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", "?")
        raise ExpertError(f"{where}: cannot download {repo} (HTTP {status}); try again later") from None
    return Path(folder)


def check_adapter_base(adapter_config: dict, base: str, where: str) -> None:
    """An adapter trained on a Hub base must name the recipe's base (ids compared without revision)."""
    declared = str(adapter_config.get("base_model_name_or_path") or "")
    if looks_like_repo_id(declared) and looks_like_repo_id(base) and declared.lower() != base.split("@")[0].lower():
        raise ExpertError(f"{where}: this adapter was trained on {declared}, but base_model is {base}")


@dataclass(frozen=True)
class PushRequest:
    """What to publish where; `command()` is the exact command that retries it."""

    folder: Path
    repo_id: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None
    include_state: bool = False

    def command(self) -> str:
        args = ["mergekit-swarm", "push", str(self.folder), self.repo_id]
        args += ["--private"] * self.private + ["--include-state"] * self.include_state
        args += ["--revision", self.revision] * bool(self.revision)
        args += ["--commit-message", self.commit_message] * bool(self.commit_message)
        return shlex.join(args)


def push(request: PushRequest, *, attempts: int = 4, backoff: float = 2.0) -> str:
    """Create the repo (if needed) and upload the folder; returns the commit URL.

    401/403 stop at once with how to log in; 429, 5xx and connection errors are retried
    with exponential backoff, then reported with the command to retry. The folder is only
    read, never changed.
    """
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not (request.folder / "README.md").exists() and not any(request.folder.glob("*.safetensors")):
        raise HubError(f"{request.folder} does not look like a finished output folder (no weights, no card)")
    api = HfApi()
    problem = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            # private=None keeps the owner's default visibility; the flag only ever makes it private
            api.create_repo(request.repo_id, private=True if request.private else None, exist_ok=True, repo_type="model")
            if request.revision:
                api.create_branch(request.repo_id, branch=request.revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=request.repo_id,
                folder_path=request.folder,
                revision=request.revision,
                commit_message=request.commit_message or "Upload Model Swarms winner (mergekit-swarm)",
                ignore_patterns=["*.tmp", *([] if request.include_state else STATE_FILES)],
            )
            return str(getattr(info, "commit_url", info))
        except HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            if status in (401, 403):
                raise HubError(
                    f"not allowed to write to {request.repo_id} (HTTP {status}): log in with `hf auth login`, "
                    "or set HF_TOKEN to a token with write access"
                ) from None
            if status is not None and status != 429 and status < 500:
                raise HubError(f"pushing to {request.repo_id} failed (HTTP {status}); retry with: {request.command()}") from None
            problem = f"HTTP {status}"
        except httpx2.TransportError as exc:
            problem = type(exc).__name__
    raise HubError(
        f"pushing to {request.repo_id} failed after {attempts} attempts ({problem}); {request.folder} is unchanged, "
        f"retry with: {request.command()}"
    )
