"""Orbax checkpoints of the TrainState: the latest few (for resuming) and the best (by val AP).

Orbax writes each checkpoint to a temporary folder and renames it when complete, so an
interrupted save never looks like a checkpoint. We checkpoint synchronously: a run that is
killed right after a save has that save on disk.

Beside each latest checkpoint, `input/<step>.json` keeps the training input's position and what
its batches depend on (`stlib.data.pipeline.input_state`), so a resume can check it sees the
batches an uninterrupted run would.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from stlib.io import write_json_atomic

DIGEST_FILE = "digest.json"   # beside the best checkpoint: {"step", "digest"}
INPUT_DIR = "input"           # checkpoints/input/<step>.json: the input position of latest/<step>


def tree_digest(tree) -> str:
    """sha256 of a pytree's arrays (paths, dtypes, shapes and bytes, in path order).

    The identity of a checkpoint: the same on every machine for the same numbers, different
    for a teacher re-made on another CPU whose floats came out otherwise. Replicated device
    arrays are read from this process's copy, so every process of a multi-host run agrees."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def variables_digest(state) -> str:
    """`tree_digest` of what a later run loads from a checkpoint: params and BatchNorm statistics."""
    return tree_digest({"params": state.params, "batch_stats": state.batch_stats})


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

    def save(self, step: int, state, input_state: dict | None = None) -> None:
        """Saves `state` as latest checkpoint `step`, with `input_state` (the training input's
        position, written by process 0) beside it; input files of deleted checkpoints go too."""
        self._save(self.latest, step, state)
        if input_state is None or jax.process_index() != 0:
            return
        folder = self.dir / INPUT_DIR
        write_json_atomic(folder / f"{int(step)}.json", input_state)
        kept = {int(s) for s in self.latest.all_steps()}
        for f in folder.glob("*.json"):
            if f.stem.isdigit() and int(f.stem) not in kept:
                f.unlink(missing_ok=True)

    def input_state(self, step: int) -> dict | None:
        """The input position saved with latest checkpoint `step`, or None (a checkpoint written
        before positions were saved)."""
        try:
            return json.loads((self.dir / INPUT_DIR / f"{int(step)}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save_best(self, step: int, state) -> None:
        self._save(self.best, step, state)
        if jax.process_index() == 0:
            write_json_atomic(self.dir / "best" / DIGEST_FILE, {"step": int(step), "digest": variables_digest(state)})

    def best_digest(self) -> str | None:
        """The digest of the best checkpoint's variables (written when it was saved), or None."""
        return read_best_digest(self.dir.parent, self.best_step())

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


def read_best_digest(run_dir, step=None) -> str | None:
    """`<run>/checkpoints/best/digest.json`'s digest (of `step`, when given), or None."""
    path = Path(run_dir) / "checkpoints" / "best" / DIGEST_FILE
    try:
        d = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return d.get("digest") if step is None or d.get("step") == step else None
