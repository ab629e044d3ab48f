"""Orbax checkpoints of a run: `DIR/checkpoints/<step>/{state,data,metadata}`.

    checkpoints = Checkpoints(workdir, keep=3)
    checkpoints.save(step, state, data_state, metadata)      # async: returns while the arrays are written
    step = checkpoints.latest_step()                            # latest *complete* checkpoint, or None
    state, data_state, metadata = checkpoints.restore(step, abstract_state)

Items: `state` (the TrainState pytree, restored onto whatever shardings `abstract_state` carries, so a run
may resume on another mesh), `data` (the data iterator's JSON state) and `metadata` (JSON: config, step, ...).
Orbax writes each checkpoint into a temporary directory and renames it only once every item is on disk, so
a process killed mid-save (even by SIGKILL) leaves at most a temporary directory, which the next run
ignores and removes; older checkpoints are deleted only after a newer one is complete.

A complete checkpoint can still be unreadable (a disk error, a truncated copy): ``restore_latest`` tries the
newest first and moves each one it cannot read aside to ``DIR/unreadable_checkpoints/<step>`` (never deleting
it), so a run resumes from the newest intact checkpoint by itself.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import orbax.checkpoint as ocp

ITEMS = ("state", "data", "metadata")
UNREADABLE = "unreadable_checkpoints"


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (disk full, permissions, a failing filesystem). The checkpoints already
    complete are untouched: Orbax writes into a temporary directory and renames it only when done."""


BEST = "best"  # DIR/best/<step>: a fine-tuning run's best checkpoint by its eval metric


class Checkpoints:
    """A CheckpointManager over `DIR/checkpoints` (or `DIR/<name>`) keeping the `keep` latest steps."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True, name: str = "checkpoints"):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, name)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _writing(self, what: str):
        return _WriteErrors(self, what)

    def save(self, step: int, state: Any, data_state: dict, metadata: dict) -> None:
        """Starts saving (returns before the write finishes when async); a step already saved is skipped."""
        if step in self._manager.all_steps():
            return
        with self._writing(f"checkpoint {self.directory}/{step}"):
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                metadata=ocp.args.JsonSave(metadata),
            ), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """`(state, data_state, metadata)` of `step`; `abstract_state` gives shapes, dtypes and shardings."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            metadata=ocp.args.JsonRestore(),
        ))
        return restored["state"], restored["data"], restored["metadata"]

    def read_metadata(self, step: int) -> dict:
        """The run metadata stored with ``step`` (JSON: config, model, ...), without reading the arrays."""
        return self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]

    def move_aside(self, step: int) -> str:
        """Moves checkpoint ``step`` to ``DIR/unreadable_checkpoints/<step>[.<n>]`` and returns the new path."""
        target_dir = os.path.join(self.workdir, UNREADABLE)
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, str(step))
        n = 1
        while os.path.exists(target):
            target, n = os.path.join(target_dir, f"{step}.{n}"), n + 1
        os.rename(os.path.join(self.directory, str(step)), target)
        self._manager.reload()
        return target

    def restore_latest(self, abstract_state: Any, check: Callable[[dict], None] | None = None,
                       ) -> tuple[int, Any, dict, dict] | None:
        """``(step, state, data_state, metadata)`` of the newest checkpoint that can be read, or None if there is
        none. Unreadable ones are moved aside with a warning naming the step, the file error and where they went.
        ``check(metadata)`` runs on each candidate first and may raise (a workdir of another run): that is the
        caller's error, not an unreadable checkpoint, so it propagates and nothing is moved.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                metadata = self.read_metadata(step)
            except Exception as error:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
                self._unreadable(step, error)
                continue
            if check is not None:
                check(metadata)
            try:
                state, data_state, metadata = self.restore(step, abstract_state)
            except Exception as error:  # noqa: BLE001
                self._unreadable(step, error)
                continue
            return step, state, data_state, metadata
        return None

    def _unreadable(self, step: int, error: Exception) -> None:
        where = self.move_aside(step)
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        warnings.warn(f"checkpoint {self.directory}/{step} is unreadable ({type(error).__name__}: {first}); "
                      f"moved to {where} (kept, not deleted); trying the previous one", stacklevel=3)

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        with self._writing(f"a checkpoint in {self.directory}"):
            self._manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
            # Orbax's close does not join the clean-up of temporary directories that its constructor starts in a
            # thread: a process exiting right after (train.evaluate on a user error) had that thread fail at
            # interpreter shutdown, printing a traceback. (Orbax awaits it itself only before a save.)
            getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
        finally:
            self._manager.close()


class _WriteErrors:
    """Turns any failure of a checkpoint write into a ``CheckpointWriteError`` naming what and where."""

    def __init__(self, checkpoints: Checkpoints, what: str):
        self.checkpoints, self.what = checkpoints, what

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, CheckpointWriteError) or not isinstance(error, Exception):
            return False
        complete = self.checkpoints.all_steps()
        raise CheckpointWriteError(
            f"could not write {self.what} ({type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}); "
            f"the complete checkpoints {complete} are intact. Free the space or fix the directory and rerun "
            "to resume") from error


def is_complete(path: str) -> bool:
    """Whether `DIR/checkpoints/<step>` is a finished checkpoint (not an Orbax temporary directory)."""
    return os.path.isdir(path) and os.path.basename(path).isdigit() and all(
        os.path.isdir(os.path.join(path, item)) for item in ITEMS)


__all__ = ["BEST", "CheckpointWriteError", "Checkpoints", "ITEMS", "UNREADABLE", "is_complete"]
