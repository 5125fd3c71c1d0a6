"""Where a run lives while it runs, and how its output folder is published.

A run works in a hidden folder beside the output, `.<out>.partial/`, which holds the search's
checkpoint and history (`search.checkpoint.RunState`) and then the output files; the output
folder appears only when everything is written (one rename). `apply` and `compare` publish
their folders the same way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mergekit_swarm.errors import OutputError
from mergekit_swarm.names import HISTORY_FILE, RESULT_FILE, STATE_FILE
from mergekit_swarm.search.checkpoint import Checkpoint, RunState
from mergekit_swarm.storage import writing


class RunDirectory:
    """The partial folder of a run and the final output folder it becomes."""

    def __init__(self, out: Path):
        self.out = Path(os.path.abspath(out))
        self.work = self.out.parent / f".{self.out.name}.partial"
        self.state = RunState(self.work)  # the search's checkpoint and history

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
            state_file = self.state.checkpoint_path
            checkpoint = self.state.read()
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
                self.state.truncate_history(checkpoint.history_bytes)
                return checkpoint
        self.work.mkdir(parents=True)
        return None

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
