"""Where a run lives while it runs, and how its output folder is published.

A run works in a hidden folder beside the output, `.<out>.partial/`, which holds the search's
checkpoint and history (`search.run_state.RunState`) and then the output files; the output
folder appears only when everything is written (one rename). `apply` and `compare` publish
their folders the same way.

Nothing of the user's is ever deleted: every folder created here starts with `OUTPUT_MARKER`,
and `--overwrite` replaces only a folder that has it (an earlier output), never one that is, holds
or lies inside an input of the recipe (the recipe, its data, experts, base model, ...).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mergekit_swarm.core.errors import OutputError
from mergekit_swarm.core.names import HISTORY_FILE, OUTPUT_MARKER, RESULT_FILE, STATE_FILE, is_output_folder
from mergekit_swarm.core.storage import writing
from mergekit_swarm.search.run_state import Checkpoint, RunState


class RunDirectory:
    """The partial folder of a run and the final output folder it becomes."""

    def __init__(self, out: Path, command: str = "run"):
        self.out = Path(os.path.abspath(out))
        self.work = self.out.parent / f".{self.out.name}.partial"
        self.state = RunState(self.work)  # the search's checkpoint and history
        self.command = command  # which command writes it, recorded in its marker

    def finished(self, fingerprint: str) -> Checkpoint | None:
        """The checkpoint of a finished run of this recipe in the output folder, if any."""
        checkpoint = Checkpoint.read(self.out / STATE_FILE)
        complete = (self.out / RESULT_FILE).is_file()
        if checkpoint and checkpoint.fingerprint == fingerprint and checkpoint.state.done and complete:
            return checkpoint
        return None

    def open(self, fingerprint: str, *, resume: bool, overwrite: bool, inputs: Iterable[Path] = ()) -> Checkpoint | None:
        """Prepare the partial folder; return the checkpoint to continue from, if resuming.

        Refuses (OutputError, nothing touched) an output folder that is, holds or lies inside one of
        `inputs` (the recipe's files and model folders), an existing output folder without
        --overwrite, an existing folder that is not an earlier output even with --overwrite, and an
        interrupted run without --resume or --overwrite. The only things ever deleted here are an
        interrupted run the user asked to discard (--overwrite without --resume) and a partial
        folder of ours that never reached its first checkpoint.
        """
        self._check_not_an_input(inputs)
        with writing(self.work):  # e.g. a folder the user may not write to: one line
            return self._open(fingerprint, resume=resume, overwrite=overwrite)

    def _check_not_an_input(self, inputs: Iterable[Path]) -> None:
        """The output (and its partial folder beside it) must not be, hold or lie inside an input:
        replacing it would delete the user's recipe, data or experts, writing into it would change them."""
        out = self.out.resolve()
        for path in inputs:
            path = Path(path).resolve()
            if out == path or out in path.parents:
                what = "is" if out == path else "holds"
                raise OutputError(f"output folder {self.out} {what} {path}, an input of the recipe; choose another output folder")
            if path in out.parents and path.is_dir():
                raise OutputError(
                    f"output folder {self.out} is inside {path}, an input of the recipe; choose a folder outside it"
                )

    def _open(self, fingerprint: str, *, resume: bool, overwrite: bool) -> Checkpoint | None:
        self._recover_interrupted_publish()
        if self.out.exists() and not overwrite:
            if self.finished(fingerprint):
                raise OutputError(f"{self.out} already holds a finished run of this recipe; pass --overwrite to run it again")
            raise OutputError(f"output folder {self.out} already exists; pass --overwrite to replace it")
        if self.out.exists() and not _replaceable(self.out):
            raise OutputError(
                f"{self.out} is not an output of mergekit-swarm (it has no {OUTPUT_MARKER}); --overwrite only "
                "replaces an earlier output: choose another folder, or move this one away yourself"
            )
        if self.work.exists():
            if not (is_output_folder(self.work) or self.state.checkpoint_path.exists()):
                raise OutputError(
                    f"{self.work} is in the way and is not an interrupted run of mergekit-swarm; move it away yourself"
                )
            if self.state.checkpoint_path.exists() and not (overwrite and not resume):
                return self._interrupted(fingerprint, resume=resume)
            shutil.rmtree(self.work)  # ours: discarded on request, or it never reached a checkpoint
        self.work.mkdir(parents=True)
        marker = {"written_by": "mergekit-swarm", "command": self.command}
        (self.work / OUTPUT_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        return None

    def _interrupted(self, fingerprint: str, *, resume: bool) -> Checkpoint:
        """The checkpoint of the interrupted run in the partial folder, to be resumed."""
        try:
            checkpoint = self.state.load()
        except OutputError as exc:
            raise OutputError(f"{exc}; pass --overwrite to discard that run") from None
        if not resume:
            raise OutputError(
                f"an interrupted run exists in {self.work}; pass --resume to continue it or --overwrite to discard it"
            )
        if checkpoint.fingerprint != fingerprint:
            raise OutputError(
                f"the interrupted run in {self.work} was started from a different recipe or different experts "
                "(Hub models move on: pin them as org/name@commit to resume across updates; a run started before LoRA "
                "pools defaulted to swarm.lora_space: update resumes with lora_space: factor written in its recipe); "
                "pass --overwrite to discard it"
            )
        self.state.truncate_history(checkpoint.history_bytes)
        return checkpoint

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
        if is_output_folder(self.work) and not (self.work / STATE_FILE).exists():
            shutil.rmtree(self.work)

    def clear_outputs(self) -> None:
        """Remove everything but the marker, the state and the history (e.g. files of an interrupted write)."""
        for path in self.work.iterdir():
            if path.name not in (OUTPUT_MARKER, STATE_FILE, HISTORY_FILE):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    @property
    def _replaced(self) -> Path:
        return self.out.parent / f".{self.out.name}.replaced"

    def publish(self) -> None:
        """Make the finished partial folder the output folder (replacing an old one, checked to be an
        earlier output by `open`, last)."""
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


def _replaceable(folder: Path) -> bool:
    """An earlier output of ours, or an empty folder (made for the output, as mergekit users often do)."""
    return folder.is_dir() and (is_output_folder(folder) or not any(folder.iterdir()))
