"""The Hugging Face Hub, reading side: experts and base models named by repo id, downloaded before any work.

Downloads fetch only what a swarm reads (safetensors weights and index, configs, tokenizer files);
pickled weights only with `--allow-pickle`, code files only with `--trust-remote-code`. With
HF_HUB_OFFLINE=1 the local cache is used. Every failure is one line naming the repo and what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mergekit_swarm.core.errors import ExpertError, SwarmError

# Root-level names only: fnmatch's "*" also matches "/", so "*.safetensors" would pull in
# consolidated.safetensors, original/ and checkpoint-*/ copies of the weights.
WEIGHT_FILES = ["model.safetensors", "model-*.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"]
PICKLE_FILES = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json", "adapter_model.bin"]
CONFIG_FILES = ["config.json", "generation_config.json", "adapter_config.json"]
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tiktoken.model",
    "*.tiktoken",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*.jinja",
]
REMOTE_CODE_FILES = ["*.py"]  # only with --trust-remote-code
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")


class HubError(SwarmError):
    """The Hub refused or could not be reached; the message says what to do."""


@dataclass(frozen=True)
class HubModel:
    """A model named by repo id in a recipe, resolved to a local snapshot before any work."""

    repo_id: str
    revision: str | None = None
    local_path: Path | None = field(default=None, compare=False)  # the folder looked for first (for messages)

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def looks_like_repo_id(text: str) -> bool:
    """`org/name`: not a relative (./, ../) or absolute path, exactly one slash."""
    return bool(_REPO_ID.match(text)) and not text.startswith(".")


def allowed_files(*, allow_pickle: bool = False, trust_remote_code: bool = False) -> list[str]:
    return [
        *WEIGHT_FILES,
        *CONFIG_FILES,
        *TOKENIZER_FILES,
        *(PICKLE_FILES if allow_pickle else []),
        *(REMOTE_CODE_FILES if trust_remote_code else []),
    ]


def download(
    model: HubModel, *, where: str, allow_pickle: bool = False, trust_remote_code: bool = False, cache_dir: str | None = None
) -> Path:
    """The local snapshot folder of `model`, downloaded (or taken from the cache) with only the
    files a swarm reads. Every failure is one line naming the repo and what to do."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                model.repo_id,
                revision=model.revision,
                allow_patterns=allowed_files(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code),
                cache_dir=cache_dir,
            )
        )
    except Exception as exc:  # mapped to one line; anything unexpected still names the repo
        raise ExpertError(f"{where}: {_download_problem(model, exc)}") from None
    weights = [f for pattern in WEIGHT_FILES + (PICKLE_FILES if allow_pickle else []) for f in folder.glob(pattern)]
    if not weights:
        hint = "" if allow_pickle else "; if it has pickled (*.bin) weights only, pass --allow-pickle"
        raise ExpertError(f"{where}: {model} has no safetensors weights{hint}")
    return folder


def _download_problem(model: HubModel, exc: Exception) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, login = model.repo_id, "log in with `hf auth login` or set HF_TOKEN"
    cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None else exc
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if isinstance(cause, GatedRepoError):
        return f"{repo} is gated: accept its conditions on https://huggingface.co/{repo} and {login}"
    if isinstance(cause, RepositoryNotFoundError):
        local = f"; there is no local folder {model.local_path} either" if model.local_path else ""
        return f"Hub repo {repo} not found (if it is private, {login}){local}"
    if isinstance(cause, RevisionNotFoundError):
        return f"{repo} has no revision {model.revision!r}"
    if isinstance(cause, HFValidationError):
        return f"{model} is not a valid Hub repo id"
    if status in (401, 403):
        return f"the Hub refused access to {repo} (HTTP {status}): check your token ({login})"
    if isinstance(cause, HfHubHTTPError):
        return f"cannot download {repo} (HTTP {status}); try again later"
    if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return (
            f"{model} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE=1?): download it once online, or give a local folder"
        )
    if isinstance(cause, OSError) and cause.errno is not None:
        return f"cannot store {repo} in the Hugging Face cache ({cause.strerror})"
    return f"cannot download {repo} ({type(cause).__name__}: {cause})"


def check_adapter_base(adapter_config: dict, base: str, where: str) -> None:
    """An adapter trained on a Hub base must name the recipe's base (ids compared without revision)."""
    declared = str(adapter_config.get("base_model_name_or_path") or "")
    if looks_like_repo_id(declared) and looks_like_repo_id(base) and declared.lower() != base.split("@")[0].lower():
        raise ExpertError(f"{where}: this adapter was trained on {declared}, but base_model is {base}")
