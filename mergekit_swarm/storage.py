"""Writing files safely: atomic replacement, and storage faults reported in one line.

A full disk, a folder the user may not write to or a read-only file system is the storage's
fault, not the program's: `writing` turns it into an `OutputError` naming the path (the CLI
prints it as one line and exits 1) instead of a traceback.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mergekit_swarm.errors import OutputError

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
