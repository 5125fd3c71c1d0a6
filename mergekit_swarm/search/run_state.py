"""The state of a search on disk: the checkpoint and the history, in the run's work folder.

The checkpoint (`swarm_state.json`) is saved atomically after every iteration together with
the size of the history file (`swarm_history.jsonl`, one JSON line per evaluation) at that
moment, so a run stopped at any point resumes from its last complete iteration, with the
history cut back to match. A write the storage refuses is an `OutputError` naming the file,
and the run stays resumable.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_swarm.core.errors import OutputError
from mergekit_swarm.core.names import HISTORY_FILE, STATE_FILE
from mergekit_swarm.core.storage import read_json, required, write_atomic, writing
from mergekit_swarm.pso import SwarmState

FORMAT_VERSION = 4  # 3: fingerprints hash every byte of the inputs; 4: racing's example counts, times


@dataclass
class Checkpoint:
    """The search state plus the loop's own bookkeeping."""

    fingerprint: str
    state: SwarmState
    history_bytes: int = 0  # size of the history file when the state was saved
    failed: int = 0  # failed evaluations so far
    skipped: int = 0  # evaluations skipped by evaluation dropout
    fallbacks: int = 0  # evaluations scored one at a time because their batched scoring failed
    expert_dev: list[float | None] | None = None  # the experts' dev utilities (iteration 0; None: failed)
    examples_scored: int = 0  # with racing: dev examples scored so far
    examples_in_full: int = 0  # with racing: what scoring every evaluation on all of dev would have scored
    stopped: int = 0  # with racing: evaluations stopped early
    finished: int = 0  # with racing: stopped evaluations scored to the end later, for a stall probe step
    evaluation_seconds: float = 0.0  # spent scoring particles (writing them into the model included)
    search_seconds: float = 0.0  # the search loop's time, over every session of the run (a resume adds its own)
    # `racing: confident` on graded scores: each particle's personal best's scores on all of dev, per
    # component in example order, which it is paired with (a checkpoint of an earlier version has none: its
    # particles are paired as they improve)
    best_scores: dict[int, dict[str, list[float]]] | None = None

    def to_dict(self) -> dict[str, Any]:
        kept = {"best_scores": {str(i): s for i, s in self.best_scores.items()}} if self.best_scores else {}
        return {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "history_bytes": self.history_bytes,
            "failed": self.failed,
            "skipped": self.skipped,
            "fallbacks": self.fallbacks,
            "expert_dev": self.expert_dev,
            "examples_scored": self.examples_scored,
            "examples_in_full": self.examples_in_full,
            "stopped": self.stopped,
            "finished": self.finished,
            "evaluation_seconds": self.evaluation_seconds,
            "search_seconds": self.search_seconds,
            **kept,
            "state": self.state.to_dict(),
        }

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """The checkpoint at `path`; an OutputError naming it if it cannot be read or is not ours."""
        data = read_json(path, OutputError, what="checkpoint")
        if data.get("format") != FORMAT_VERSION:
            raise OutputError(f"{path} was written by another version of mergekit-swarm (format {data.get('format')!r})")
        where = str(path)
        try:
            return cls(
                fingerprint=required(data, "fingerprint", where, OutputError, str),
                state=SwarmState.from_dict(required(data, "state", where, OutputError, dict)),
                history_bytes=required(data, "history_bytes", where, OutputError, int),
                failed=required(data, "failed", where, OutputError, int),
                skipped=required(data, "skipped", where, OutputError, int),
                fallbacks=required(data, "fallbacks", where, OutputError, int),
                expert_dev=data.get("expert_dev"),
                examples_scored=required(data, "examples_scored", where, OutputError, int),
                examples_in_full=required(data, "examples_in_full", where, OutputError, int),
                stopped=required(data, "stopped", where, OutputError, int),
                finished=required(data, "finished", where, OutputError, int),
                evaluation_seconds=required(data, "evaluation_seconds", where, OutputError, float),
                search_seconds=required(data, "search_seconds", where, OutputError, float),
                best_scores=_best_scores(data.get("best_scores")),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:  # inside the search state
            raise OutputError(f"{path}: not a search state ({type(exc).__name__}: {exc})") from None

    @classmethod
    def read(cls, path: Path) -> Checkpoint | None:
        """The checkpoint at `path`, or None if there is none or it is not ours."""
        try:
            return cls.load(path)
        except OutputError:
            return None


def _best_scores(data: dict | None) -> dict[int, dict[str, list[float]]] | None:
    """`Checkpoint.best_scores` from its JSON (particle indices are keys there, so strings)."""
    if data is None:
        return None
    return {int(i): {component: [float(v) for v in values] for component, values in scores.items()} for i, scores in data.items()}


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


class RunState:
    """The checkpoint and history files of a search, in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / STATE_FILE

    @property
    def history_path(self) -> Path:
        return self.folder / HISTORY_FILE

    def read(self) -> Checkpoint | None:
        return Checkpoint.read(self.checkpoint_path)

    def load(self) -> Checkpoint:
        return Checkpoint.load(self.checkpoint_path)

    def save(self, checkpoint: Checkpoint) -> None:
        with writing(self.checkpoint_path, resumable=True):
            write_atomic(self.checkpoint_path, json.dumps(checkpoint.to_dict()))

    def history(self) -> History:
        return History(self.history_path)

    def truncate_history(self, size: int) -> None:
        """Cut the history back to what the checkpoint covers (lines written after it are redone)."""
        path = self.history_path
        if not path.exists() or path.stat().st_size < size:
            raise OutputError(f"{path} is shorter than its checkpoint says; the run cannot be resumed")
        with path.open("r+b") as handle:
            handle.truncate(size)
