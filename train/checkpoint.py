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
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

ITEMS = ("state", "data", "metadata")


class Checkpoints:
    """A CheckpointManager over `DIR/checkpoints` keeping the `keep` latest steps."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, metadata: dict) -> None:
        """Starts saving (returns before the write finishes when async); a step already saved is skipped."""
        if step in self._manager.all_steps():
            return
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

    def wait(self) -> None:
        """Blocks until every started save is complete on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def is_complete(path: str) -> bool:
    """Whether `DIR/checkpoints/<step>` is a finished checkpoint (not an Orbax temporary directory)."""
    return os.path.isdir(path) and os.path.basename(path).isdigit() and all(
        os.path.isdir(os.path.join(path, item)) for item in ITEMS)


__all__ = ["Checkpoints", "ITEMS", "is_complete"]
