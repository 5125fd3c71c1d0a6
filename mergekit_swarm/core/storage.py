"""Reading and writing files safely: every fault reported in one line naming the file.

A full disk, a folder the user may not write to or a read-only file system is the storage's
fault, not the program's: `writing` turns it into an `OutputError` naming the path (the CLI
prints it as one line and exits 1) instead of a traceback. On the reading side, `read_text`,
`read_json` and `read_jsonl` turn a missing, unreadable or non-UTF-8 file, a folder in a file's
place, invalid JSON and JSON of the wrong type into the caller's error class, naming the file and line.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from mergekit_swarm.core.errors import OutputError, SwarmError

_JSON_TYPES = {dict: "a JSON object", list: "a JSON array", str: "a JSON string"}

# Failures of the storage rather than of the program: the disk is full, the folder is not ours to
# write, the file system is read-only. They become one line naming the path (`writing`).
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}


@contextmanager
def writing(path: Path, *, resumable: bool = False) -> Iterator[None]:
    """Turn a failed write under `path` (disk full, permission denied, read-only file system) into
    an OutputError naming the file, instead of a traceback (`resumable`: say how to continue)."""
    folder = os.path.abspath(path if path.is_dir() else path.parent)
    try:
        yield
    except OSError as exc:
        elsewhere = exc.filename is not None and not os.path.abspath(exc.filename).startswith(folder)
        if exc.errno not in WRITE_FAILURES or elsewhere:  # not ours: e.g. an expert that cannot be read
            raise
        raise OutputError(_failure(exc.filename or path, os.strerror(exc.errno), resumable)) from None
    except Exception as exc:
        # safetensors reports I/O errors as its own error type, with no file name
        if type(exc).__name__ != "SafetensorError" or "while serializing: I/O error: " not in str(exc):
            raise
        reason = str(exc).split("I/O error: ", 1)[1].split(" (os error")[0]
        raise OutputError(_failure(path, reason, resumable)) from None


def _failure(path, reason: str, resumable: bool) -> str:
    hint = "; the search so far is kept: free space (or fix permissions) and continue with --resume" if resumable else ""
    return f"cannot write {path}: {reason}{hint}"


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # e.g. disk full: the old file stays, the torn new one goes
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def read_text(path: Path, error: type[SwarmError], what: str = "file") -> str:
    """The content of a UTF-8 text file; any reason it cannot be read is `error`, in one line naming
    the file (`what` it is, e.g. "data file", and its path)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None


def parse_json(text: str, where: str, error: type[SwarmError], expect: type = dict) -> Any:
    """`text` parsed as JSON of type `expect` (`where`: the file, or file:line, for messages)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(value, expect) or isinstance(value, bool):
        raise error(f"{where}: expected {_JSON_TYPES.get(expect, expect.__name__)}, found {_json_type(value)}")
    return value


def read_json(path: Path, error: type[SwarmError], expect: type = dict, what: str = "file") -> Any:
    """A JSON file holding a value of type `expect` (an object by default); faults are `error`, naming it."""
    return parse_json(read_text(path, error, what), str(path), error, expect)


def read_jsonl(path: Path, error: type[SwarmError], expect: type = object, what: str = "file") -> list[tuple[int, Any]]:
    """The (line number, value) of every non-blank line of a JSON-lines file; faults name file and line."""
    text = read_text(path, error, what)
    return [
        (number, parse_json(line, f"{path}:{number}", error, expect))
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def required(mapping: dict, key: str, where: str, error: type[SwarmError], expect: type = object) -> Any:
    """`mapping[key]`, which must exist and be of type `expect`; else `error` naming `where` and the key."""
    if key not in mapping:
        raise error(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, expect) or (isinstance(value, bool) and expect is not bool):
        raise error(f"{where}: {key!r} must be {_JSON_TYPES.get(expect, expect.__name__)}, found {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)
