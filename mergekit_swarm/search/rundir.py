"""Where a run lives while it runs, how it is checkpointed, and how it is published.

A run works in a hidden folder beside the output, `.<out>.partial/`, and the output
folder appears only when everything is written (one rename). The state is saved
atomically after every iteration together with the size of the history file at that
moment, so a run killed at any point resumes from its last complete iteration, with
the history cut back to match.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_swarm.errors import OutputError
from mergekit_swarm.output.result import RESULT_FILE
from mergekit_swarm.pso import SwarmState

STATE_FILE = "swarm_state.json"
HISTORY_FILE = "swarm_history.jsonl"
FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    """The search state plus the loop's own bookkeeping."""

    fingerprint: str
    state: SwarmState
    history_bytes: int = 0  # size of the history file when the state was saved
    failed: int = 0  # failed evaluations so far
    skipped: int = 0  # evaluations skipped by evaluation dropout
    expert_dev: list[float] | None = None  # the experts' dev utilities (iteration 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "history_bytes": self.history_bytes,
            "failed": self.failed,
            "skipped": self.skipped,
            "expert_dev": self.expert_dev,
            "state": self.state.to_dict(),
        }

    @classmethod
    def read(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at `path`, or None if there is none or it is not ours."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT_VERSION:
                return None
            return cls(
                fingerprint=data["fingerprint"],
                state=SwarmState.from_dict(data["state"]),
                history_bytes=data["history_bytes"],
                failed=data["failed"],
                skipped=data["skipped"],
                expert_dev=data["expert_dev"],
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


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


class History:
    """The append-only history file of a run (one JSON line per evaluation); a failed write is an
    OutputError naming it, and the run stays resumable from its last checkpoint."""

    def __init__(self, path: Path):
        self.path = path
        with writing(path, resumable=True):
            self._handle = path.open("a", encoding="utf-8")

    def append(self, record: dict) -> None:
        with writing(self.path, resumable=True):
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()

    def sync(self) -> int:
        """Make every line durable; returns the file's size (what the next checkpoint covers)."""
        with writing(self.path, resumable=True):
            os.fsync(self._handle.fileno())
            return self._handle.tell()

    def close(self) -> None:
        with suppress(OSError):  # lines after the last sync are cut on resume anyway
            self._handle.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunDirectory:
    """The partial folder of a run and the final output folder it becomes."""

    def __init__(self, out: Path):
        self.out = Path(os.path.abspath(out))
        self.work = self.out.parent / f".{self.out.name}.partial"

    @property
    def history_path(self) -> Path:
        return self.work / HISTORY_FILE

    def finished(self, fingerprint: str) -> Checkpoint | None:
        """The checkpoint of a finished run of this recipe in the output folder, if any."""
        checkpoint = Checkpoint.read(self.out / STATE_FILE)
        complete = (self.out / RESULT_FILE).is_file()
        if checkpoint and checkpoint.fingerprint == fingerprint and checkpoint.state.done and complete:
            return checkpoint
        return None

    def open(self, fingerprint: str, *, resume: bool, overwrite: bool) -> Checkpoint | None:
        """Prepare the partial folder; return the checkpoint to continue from, if resuming.

        Refuses (OutputError) to touch an existing output folder without --overwrite, and
        an interrupted run without --resume or --overwrite. The only things ever deleted
        here are an interrupted run the user asked to discard (--overwrite without
        --resume) and a partial folder that never reached its first checkpoint.
        """
        with writing(self.work):  # e.g. a folder the user may not write to: one line
            return self._open(fingerprint, resume=resume, overwrite=overwrite)

    def _open(self, fingerprint: str, *, resume: bool, overwrite: bool) -> Checkpoint | None:
        self._recover_interrupted_publish()
        if self.out.exists() and not overwrite:
            if self.finished(fingerprint):
                raise OutputError(f"{self.out} already holds a finished run of this recipe; pass --overwrite to run it again")
            raise OutputError(f"output folder {self.out} already exists; pass --overwrite to replace it")
        if self.work.exists():
            state_file = self.work / STATE_FILE
            checkpoint = Checkpoint.read(state_file)
            if not state_file.exists() or (overwrite and not resume):
                shutil.rmtree(self.work)
            elif checkpoint is None:
                raise OutputError(
                    f"{state_file} cannot be read (another version of mergekit-swarm?); pass --overwrite to discard that run"
                )
            elif not resume:
                raise OutputError(
                    f"an interrupted run exists in {self.work}; pass --resume to continue it or --overwrite to discard it"
                )
            elif checkpoint.fingerprint != fingerprint:
                raise OutputError(
                    f"the interrupted run in {self.work} was started from a different recipe or different experts "
                    "(Hub models move on: pin them as org/name@commit to resume across updates); pass --overwrite to discard it"
                )
            else:
                self._truncate_history(checkpoint.history_bytes)
                return checkpoint
        self.work.mkdir(parents=True)
        return None

    def history(self) -> History:
        return History(self.history_path)

    @contextmanager
    def writing_outputs(self, *, resumable: bool) -> Iterator[None]:
        """Write the output files in the partial folder; if the storage fails, remove what was
        half-written (resumable runs keep their state and history) and report it in one line."""
        try:
            with writing(self.work, resumable=resumable):
                yield
        except OutputError:
            with suppress(OSError):
                self.clear_outputs() if resumable else shutil.rmtree(self.work)
            raise

    def discard_unstarted(self) -> None:
        """Remove the partial folder of a run that stopped before evaluating anything (e.g. Ray
        workers that could not start): without a checkpoint there is nothing in it to resume."""
        if self.work.is_dir() and not (self.work / STATE_FILE).exists():
            shutil.rmtree(self.work)

    def clear_outputs(self) -> None:
        """Remove everything but the state and the history (e.g. files of an interrupted write)."""
        for path in self.work.iterdir():
            if path.name not in (STATE_FILE, HISTORY_FILE):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _truncate_history(self, size: int) -> None:
        path = self.history_path
        if not path.exists() or path.stat().st_size < size:
            raise OutputError(f"{path} is shorter than its checkpoint says; the run cannot be resumed")
        with path.open("r+b") as handle:
            handle.truncate(size)

    def save(self, checkpoint: Checkpoint) -> None:
        with writing(self.work / STATE_FILE, resumable=True):
            write_atomic(self.work / STATE_FILE, json.dumps(checkpoint.to_dict()))

    @property
    def _replaced(self) -> Path:
        return self.out.parent / f".{self.out.name}.replaced"

    def publish(self) -> None:
        """Make the finished partial folder the output folder (replacing an old one last)."""
        replaced = None
        if self.out.exists():
            replaced = self._replaced
            os.rename(self.out, replaced)
        os.rename(self.work, self.out)
        if replaced is not None:
            shutil.rmtree(replaced)

    def _recover_interrupted_publish(self) -> None:
        """A crash inside `publish` can leave the old output aside; put it back (or finish)."""
        if not self._replaced.exists():
            return
        if self.out.exists():  # the new output is in place: only the clean-up was missed
            shutil.rmtree(self._replaced)
        else:
            os.rename(self._replaced, self.out)
