"""Content identities of the files a run reads: what its resume fingerprint is made of.

Every byte of every file a run reads is hashed (sha256), so an expert retrained in its middle
layers, an edited tokenizer or data file, or a changed utility module is noticed on resume. Hashing
is paid once per file version: digests are cached by (path, size, mtime, inode) in a small JSON file
of the user's cache folder (`MERGEKIT_SWARM_CACHE`, else `$XDG_CACHE_HOME/mergekit_swarm`), and files
of the Hugging Face cache are not read at all: their blob's name is already the hash of its content.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

from tqdm.auto import tqdm

CACHE_ENV = "MERGEKIT_SWARM_CACHE"
CACHE_FILE = "file_hashes.json"
_CACHE_ENTRIES = 20_000  # newest kept; a stale entry costs one line, a missing one a re-hash
_CHUNK = 8 << 20
_PROGRESS_BYTES = 2 << 30  # a bar when there is this much to hash (about 1.5 s per GB per core)
_HUB_BLOB = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")  # git sha1 (small files) or sha256 (LFS)


def cache_folder() -> Path:
    """Where the digest cache lives (the folder is created on first write)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mergekit_swarm"


class DigestCache:
    """sha256 digests of files, valid while the file's size, mtime and inode stay the same."""

    def __init__(self, folder: Path | None = None):
        self.path = (folder or cache_folder()) / CACHE_FILE
        self.entries: dict[str, str] = {}
        with suppress(OSError, ValueError):  # unreadable or corrupt: it is only a cache
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self.entries = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
        self.changed = False

    @staticmethod
    def key(path: Path) -> str:
        stat = path.stat()
        return f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"

    def digests(self, paths: Iterable[Path]) -> dict[Path, str]:
        """The digest of every file, hashing (in parallel, with a progress bar when large) only
        those neither cached nor named by their content in the Hugging Face cache."""
        found, todo = {}, []
        for path in paths:
            blob = os.path.realpath(path)
            if Path(blob).parent.name == "blobs" and _HUB_BLOB.match(Path(blob).name):
                found[path] = "hub:" + Path(blob).name
            elif (known := self.entries.get(self.key(path))) is not None:
                found[path] = known
            else:
                todo.append(path)
        total = sum(p.stat().st_size for p in todo)
        with (
            tqdm(
                total=total, unit="B", unit_scale=True, desc="hashing inputs", disable=total < _PROGRESS_BYTES, leave=False
            ) as bar,
            ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool,
        ):  # hashlib frees the GIL
            for path, digest in zip(todo, pool.map(lambda p: _sha256(p, bar), todo)):
                found[path] = digest
                self.entries[self.key(path)] = digest
                self.changed = True
        return found

    def save(self) -> None:
        """Write the cache back (newest entries kept); a cache that cannot be written is skipped."""
        if not self.changed:
            return
        entries = dict(list(self.entries.items())[-_CACHE_ENTRIES:])
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entries), encoding="utf-8")
            os.replace(tmp, self.path)
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        self.changed = False


def _sha256(path: Path, bar: tqdm) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def folder_files(folder: Path, patterns: Iterable[str]) -> list[Path]:
    """The files of a model folder that a run reads: top-level names matching `patterns`
    (weights, configs, tokenizer files), in name order."""
    patterns = list(patterns)
    return sorted(p for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns))


def identities(paths: Iterable[Path], patterns: Iterable[str], cache: DigestCache) -> dict[str, str | None]:
    """Content identity of each path: a file's digest, a folder's digest over the digests of its
    files that match `patterns` (names included), None for a path that does not exist."""
    paths, patterns = list(paths), list(patterns)
    members = {p: folder_files(p, patterns) if p.is_dir() else [p] for p in paths if p.exists()}
    digests = cache.digests(dict.fromkeys(f for files in members.values() for f in files))
    cache.save()
    result: dict[str, str | None] = {}
    for path in paths:
        if path not in members:
            result[str(path)] = None
        elif path.is_dir():
            folder = hashlib.sha256()
            for file in members[path]:
                folder.update(f"{file.name}\0{digests[file]}\n".encode())
            result[str(path)] = folder.hexdigest()
        else:
            result[str(path)] = digests[path]
    return result
