"""The Hugging Face Hub, publishing side: `push` of an output folder of `run`, `apply` or `compare`.

Only such a folder is pushed, and only the files those commands write (`push_allow_list`; the resume
state only with `--include-state`, anything else only with `--include`), with bounded retries on 429,
5xx and network errors. The token comes from huggingface_hub's usual sources (HF_TOKEN, `hf auth
login`); nothing here reads, prints or logs it.
"""

from __future__ import annotations

import glob
import os
import shlex
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from mergekit_swarm.core.names import (
    CARD_FILE,
    COMPRESSED_FOLDER,
    CURVES_PLOT,
    EXAMPLES_FILE,
    HISTORY_FILE,
    HISTORY_PLOT,
    LEADERBOARD,
    OUTPUT_MARKER,
    RECIPE_COPY,
    RECIPE_FILE,
    RECIPES_FOLDER,
    RESULT_FILE,
    STATE_FILE,
    TEST_EXAMPLES,
    is_output_folder,
)
from mergekit_swarm.hub.download import CONFIG_FILES, PICKLE_FILES, TOKENIZER_FILES, WEIGHT_FILES, HubError


def push_allow_list(*, include_state: bool = False) -> list[str]:
    """The files of an output folder that `push` uploads: everything `run`, `apply` and `compare` write.

    One list for the three commands, from the file names they write (`names`). The patterns are
    relative to the output folder and matched as in the shell, one path segment at a time: `*` never
    crosses a `/` and never matches a leading dot, so `model-*.safetensors` does not take a copy in
    `checkpoint-1/`, nor `*.tiktoken` a `.env.tiktoken` (see `PushRequest.files`).

    Args:
        include_state (`bool`, *optional*, defaults to `False`):
            Also the resume state (`swarm_state.json`, and that of each search of a comparison).

    Returns:
        `list[str]`: the glob patterns.
    """
    searches = "swarm_*"  # compare's swarm runs, a folder per granularity (compare/comparison.py)
    return [
        OUTPUT_MARKER,
        *WEIGHT_FILES,
        *PICKLE_FILES,  # what --no-safe-serialization writes
        *CONFIG_FILES,
        *TOKENIZER_FILES,
        CARD_FILE,
        RECIPE_FILE,
        RECIPE_COPY,
        HISTORY_PLOT,
        HISTORY_FILE,
        RESULT_FILE,
        EXAMPLES_FILE,
        *(f"{LEADERBOARD}.{ext}" for ext in ("md", "json", "png")),
        f"{RECIPES_FOLDER}/*.yml",
        CURVES_PLOT,
        TEST_EXAMPLES,
        *(f"{COMPRESSED_FOLDER.format(rank='*')}/{pattern}" for pattern in (*WEIGHT_FILES, *CONFIG_FILES, *TOKENIZER_FILES)),
        f"{searches}/{OUTPUT_MARKER}",
        f"{searches}/{HISTORY_FILE}",
        *([STATE_FILE, f"{searches}/{STATE_FILE}"] if include_state else []),
    ]


def _glob_match(path: str, pattern: str) -> bool:
    """Shell-style matching of a relative path: `*`, `?` and `[...]` within one segment, a leading dot only
    where the pattern writes it (fnmatch alone, as huggingface_hub uses it, lets `*` match `/` and dots)."""
    names, globs = path.split("/"), pattern.removeprefix("./").strip("/").split("/")
    return len(names) == len(globs) and all(
        fnmatchcase(name, g) and (g.startswith(".") or not name.startswith(".")) for name, g in zip(names, globs)
    )


def _included(path: str, pattern: str) -> bool:
    """Whether an `--include` pattern takes `path`: it names the file, or a folder above it (whose
    dotfiles still need naming)."""
    names = path.split("/")
    return any(
        _glob_match("/".join(names[:k]), pattern) and not any(n.startswith(".") for n in names[k:])
        for k in range(1, len(names) + 1)
    )


@dataclass(frozen=True)
class PushRequest:
    """What to publish where; `files()` is what is uploaded, `command()` the exact command that retries it."""

    folder: Path
    repo_id: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None
    include_state: bool = False
    include: tuple[str, ...] = ()  # extra glob patterns (relative to the folder), as `--include`

    def __post_init__(self) -> None:
        # a lone pattern given as a string would otherwise be read letter by letter
        patterns = (self.include,) if isinstance(self.include, str) else tuple(self.include)
        object.__setattr__(self, "include", patterns)

    def command(self) -> str:
        """The `mergekit-swarm push` command line of this request.

        Returns:
            `str`: the command, quoted for a POSIX shell.
        """
        args = ["mergekit-swarm", "push", str(self.folder), self.repo_id]
        args += ["--private"] * self.private + ["--include-state"] * self.include_state
        args += ["--revision", self.revision] * bool(self.revision)
        args += ["--commit-message", self.commit_message] * bool(self.commit_message)
        for pattern in self.include:
            args += ["--include", pattern]
        return shlex.join(args)

    def files(self) -> list[str]:
        """The files of `folder` this request uploads: those of `push_allow_list` and those `include` names.

        Returns:
            `list[str]`: paths relative to `folder`, with `/` separators, sorted.

        Raises:
            `HubError`: an `include` pattern that matches no file (a typo would silently leave the file out).
        """
        allowed = push_allow_list(include_state=self.include_state)
        found = [
            Path(root, name).relative_to(self.folder).as_posix()
            for root, _, names in os.walk(self.folder)  # symlinked folders are not followed
            for name in names
        ]
        for pattern in self.include:
            if not any(_included(path, pattern) for path in found):
                raise HubError(f"--include {pattern}: no file in {self.folder} matches it (dotfiles must be named)")
        return sorted(
            path for path in found if any(_glob_match(path, p) for p in allowed) or any(_included(path, p) for p in self.include)
        )


def check_push_target(repo_id: str) -> None:
    """What can be checked before hours of search: a valid repo id, a token, the network."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(f"--push-to-hub {repo_id}: not a valid Hub repo id (org/name)") from None
    if "/" not in repo_id:
        raise HubError(f"--push-to-hub {repo_id}: name the owner too, as in org/name")
    if constants.is_offline_mode():
        raise HubError("--push-to-hub needs the Hub, but HF_HUB_OFFLINE is set")
    if get_token() is None:
        raise HubError("--push-to-hub needs a Hugging Face token: log in with `hf auth login` or set HF_TOKEN")


def _network_errors() -> tuple[type[Exception], ...]:
    """What a push retries besides 429 and 5xx: the transport errors huggingface_hub's own backoff
    retries (it uses httpx2), and the OS's connection failures and timeouts (e.g. from a socket)."""
    import httpx2

    return (
        httpx2.TimeoutException,
        httpx2.NetworkError,
        httpx2.RemoteProtocolError,
        httpx2.ProxyError,
        ConnectionError,
        TimeoutError,
    )


def push(request: PushRequest, *, attempts: int = 4, backoff: float = 2.0) -> str:
    """Publish an output folder of `run`, `apply` or `compare` on the Hub: create the repo if needed,
    upload the files those commands write.

    Only `request.files()` is uploaded: the allow-list of `push_allow_list` (the resume state
    `swarm_state.json` only with `request.include_state`) and what `request.include` names; never a
    dotfile or an unknown file otherwise. The token comes from huggingface_hub's usual sources
    (`HF_TOKEN`, `hf auth login`) and is never printed. The folder is only read, never changed.

    Args:
        request (`PushRequest`):
            The folder, the repo id (`org/name`), and `private`, `revision`, `commit_message`,
            `include_state`, `include`.
        attempts (`int`, *optional*, defaults to 4):
            Tries of an upload on 429, 5xx and network errors (connection failures, timeouts).
        backoff (`float`, *optional*, defaults to 2.0):
            Seconds before the first retry; doubles each time.

    Returns:
        `str`: the URL of the commit.

    Raises:
        `HubError`: not an output folder of mergekit-swarm or not a finished one (nothing uploaded), an
            `include` pattern that matches nothing, an invalid repo id, offline mode, 401/403 (with how to
            log in), another 4xx, or retries exhausted (with the last error and the exact command to retry).
        `Exception`: anything else (e.g. a programming error) at once, unchanged.

    Example:

    ```python
    >>> from pathlib import Path
    >>> from mergekit_swarm.hub import PushRequest, push
    >>> push(PushRequest(Path("out"), "org/my-swarm-winner", private=True, include=("eval/*.json",)))
    ```
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = request.folder
    if not is_output_folder(folder):
        raise HubError(
            f"{folder} is not an output folder of mergekit-swarm (it has no {OUTPUT_MARKER}): push uploads only "
            "what run, apply or compare wrote; nothing was uploaded (use `hf upload` for other folders)"
        )
    files = request.files()
    if CARD_FILE not in files and not any(_glob_match(f, p) for f in files for p in WEIGHT_FILES + PICKLE_FILES):
        raise HubError(f"{folder} is not a finished output folder (no weights, no card); nothing was uploaded")
    check_push_target(request.repo_id)
    retry = f"{folder} is unchanged, retry with: {request.command()}"
    api = HfApi()
    problem = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            return _push_once(api, request, files)
        except HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", None)
            if status in (401, 403):
                raise HubError(
                    f"not allowed to write to {request.repo_id} (HTTP {status}): log in with `hf auth login`, "
                    "or set HF_TOKEN to a token with write access"
                ) from None
            if status is None or (status != 429 and status < 500):
                detail = f": {exc.server_message}" if getattr(exc, "server_message", None) else ""
                raise HubError(f"pushing to {request.repo_id} failed (HTTP {status}{detail}); {retry}") from None
            problem = f"HTTP {status}"
        except OfflineModeIsEnabled:  # a ConnectionError, but retrying cannot help
            raise HubError(f"pushing to {request.repo_id} needs the Hub, but HF_HUB_OFFLINE is set; {retry}") from None
        except _network_errors() as exc:
            problem = f"{type(exc).__name__}: {exc}"
    raise HubError(f"pushing to {request.repo_id} failed after {attempts} attempts ({problem}); {retry}")


def _push_once(api, request: PushRequest, files: list[str]) -> str:
    # private=None keeps the owner's default visibility; the flag only ever asks for private
    api.create_repo(request.repo_id, private=True if request.private else None, exist_ok=True, repo_type="model")
    if request.private and not api.repo_info(request.repo_id).private:
        raise HubError(
            f"{request.repo_id} already exists and is public; --private does not change that: "
            "make it private on the Hub first, or push to another repo"
        )
    if request.revision and request.revision != "main" and not request.revision.startswith("refs/"):
        api.create_branch(request.repo_id, branch=request.revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=request.repo_id,
        folder_path=request.folder,
        revision=request.revision,
        commit_message=request.commit_message or "Upload Model Swarms winner (mergekit-swarm)",
        # the exact files, escaped: upload_folder's fnmatch would let a pattern's "*" reach into subfolders
        allow_patterns=[glob.escape(path) for path in files],
    )
    return str(getattr(info, "commit_url", info))
