"""Orbax checkpoints of the TrainState: the latest few (for resuming) and the best (by val AP).

Orbax writes each checkpoint to a temporary folder and renames it when complete, so an
interrupted save never looks like a checkpoint. We checkpoint synchronously: a run that is
killed right after a save has that save on disk.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import flax.serialization
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory, keep: int = 2):
        self.dir = Path(directory).absolute()
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
        self.latest = ocp.CheckpointManager(self.dir / "latest", options=opts)
        best_opts = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False, create=True)
        self.best = ocp.CheckpointManager(self.dir / "best", options=best_opts)

    @staticmethod
    def _save(manager, step: int, state) -> None:
        manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)), force=True)
        manager.wait_until_finished()

    @staticmethod
    def _restore(manager, step: int, target):
        restored = manager.restore(step, args=ocp.args.StandardRestore(flax.serialization.to_state_dict(target)))
        return flax.serialization.from_state_dict(target, restored)

    def save(self, step: int, state) -> None:
        self._save(self.latest, step, state)

    def save_best(self, step: int, state) -> None:
        self._save(self.best, step, state)

    def latest_step(self):
        return self.latest.latest_step()

    def best_step(self):
        return self.best.latest_step()

    def restore_latest(self, target):
        """Returns (state, step) from the newest checkpoint, or (target, 0) when there is none."""
        step = self.latest.latest_step()
        if step is None:
            return target, 0
        return self._restore(self.latest, step, target), int(step)

    def restore_best(self, target):
        step = self.best.latest_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint under {self.dir / 'best'}")
        return self._restore(self.best, step, target)

    def drop_best_after(self, step: int) -> None:
        """Deletes best checkpoints newer than `step` (made after the checkpoint a run resumes from)."""
        for s in list(self.best.all_steps()):
            if s > step:
                self.best.delete(s)

    def close(self):
        self.latest.close()
        self.best.close()

    @staticmethod
    def wipe(directory) -> None:
        shutil.rmtree(directory, ignore_errors=True)
