"""`train_and_evaluate(task, run_dir)`: the engine. It trains any task (`stlib.tasks`) with
validation, best checkpoint, early stopping and resume, and knows no task itself.

Sec. 3.2: "train until it converges" on a held-out validation set. The task's validation
metric (COCO AP for detection, top-1 for pre-training) is evaluated every `train.eval_every`
steps, the best checkpoint kept, and the run stops early after `train.early_stop_patience`
evaluations without improvement (0 = run all steps).

A task is any object with: `params` (the run's `stlib.config.Params`; `params.train` drives
the loop), `mesh`, `train_data` (`train_batch(step, batch_size, seed, process_index,
process_count)`, `__len__`, optional `streams`/`sizes`/`stats`), `val_data` (`__len__`),
`train_source`/`val_source` (`stats`), the jitted `train_step(state, batch) -> (state,
metrics)`, `init_state()`, `evaluate(state) -> dict`, the validation `metric` that picks the
best checkpoint, the `metric_keys` reported with it, and optionally `summary() -> dict`
(more keys for metrics.json, e.g. where a student's pseudo labels came from).

Resume: the run directory is addressed by the params (`stlib.config.run_id`). Re-running
the same command restores the newest checkpoint, drops log lines written after it, and
continues; batches are a pure function of the step, so the result equals an
uninterrupted run. Each checkpoint keeps the input's position and what its batches depend on
(`stlib.data.pipeline.input_state`); a resume whose data changed is refused, naming the change. A non-finite loss stops the run before any checkpoint of the bad
state is written, so the last good checkpoint is kept.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import jax
from tqdm.auto import tqdm

from stlib import config as cfg
from stlib.data.pipeline import TrainBatches, check_input_state, input_state, prefetch
from stlib.io import machine, run_lock, to_jsonable, write_json_atomic, write_text_atomic
from stlib.progress import Reporter
from stlib.train import sharding
from stlib.train.checkpoints import Checkpoints
from stlib.train.optimizers import learning_rate_schedule
from stlib.train.state import count_params


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


class MetricsLog:
    """metrics.jsonl: one JSON object per line ({"kind": "train"|"eval"|"session", "step": ..., ...}).

    A "session" line closes each stretch of training (steps and wall seconds, evaluation
    included), so a resumed run still reports its total time.
    """

    def __init__(self, path, write: bool = True):
        self.path = Path(path)
        self.write = write   # False in the other processes of a multi-process run: they keep the entries
        self.entries = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    try:
                        self.entries.append(json.loads(line))
                    except json.JSONDecodeError:  # a line cut by a kill: drop it
                        pass

    def truncate_after(self, step: int) -> None:
        self.entries = [e for e in self.entries if e["step"] <= step]
        if self.write:
            write_text_atomic(self.path, "".join(json.dumps(e) + "\n" for e in self.entries))

    def append(self, entry: dict) -> None:
        entry = to_jsonable(entry)
        self.entries.append(entry)
        if not self.write:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()

    def evals(self):
        return [e for e in self.entries if e["kind"] == "eval"]


def _score(entry: dict, metric: str = "AP") -> float:
    """An eval line's validation metric for ranking; NaN (logged as null) ranks below every real value."""
    return entry[metric] if entry.get(metric) is not None else -1.0


def early_stop_due(evals: list[dict], patience: int, metric: str = "AP") -> bool:
    if patience <= 0 or not evals:
        return False
    best_i = max(range(len(evals)), key=lambda i: _score(evals[i], metric))
    return len(evals) - 1 - best_i >= patience


def _tensorboard_writer(run_dir: Path):
    """A TensorBoard writer, or None with a warning where tensorflow is not installed (an
    accelerator image without it): the metrics still go to metrics.jsonl."""
    # TensorFlow's C++ INFO lines (CPU features, oneDNN) would land in every executed notebook
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    try:
        import tensorflow as tf  # imported lazily: only runs that write TensorBoard events pay for it
    except ImportError:
        import warnings
        warnings.warn("train.tensorboard: tensorflow is not installed, so no TensorBoard events are written "
                      "(metrics.jsonl has every logged value)")
        return None
    tf.config.set_visible_devices([], "GPU")
    return tf.summary.create_file_writer(str(run_dir / "tensorboard"))


def _write_scalars(writer, prefix: str, step: int, values: dict) -> None:
    """TensorBoard scalars (NaN values, e.g. APl with no large objects, are left out)."""
    if writer is None:
        return
    import tensorflow as tf
    with writer.as_default(step=step):
        for k, v in values.items():
            if v == v:
                tf.summary.scalar(f"{prefix}/{k}", v)


def train_and_evaluate(task, run_dir, *, progress: bool = True) -> dict:
    """Trains `task` (built by `stlib.experiments.assemble.build_task`, or by hand from a
    `stlib.tasks` class), recording into `run_dir`; returns its final metrics.

    Writes params.yaml, metrics.jsonl (train and eval lines), metrics.json (final),
    checkpoints/ (latest and best) and tensorboard/ into `run_dir`. The main process holds
    `run_dir/run.lock` meanwhile (`stlib.io.run_lock`): a second process on the same run is refused.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() != 0:
        return _train_and_evaluate(task, run_dir, progress)
    with run_lock(run_dir):
        return _train_and_evaluate(task, run_dir, progress)


def _train_and_evaluate(exp, run_dir: Path, progress: bool) -> dict:
    p = exp.params
    tp = p.train
    is_main = jax.process_index() == 0
    if is_main:
        write_text_atomic(run_dir / "params.yaml", cfg.dump_params(p))
    TrainBatches(exp.train_data, tp.batch_size, tp.seed, 0, 0)   # a bad STLIB_INPUT_WORKERS stops here, before work
    state = exp.init_state()
    ckpts = Checkpoints(run_dir / "checkpoints", keep=tp.keep_checkpoints)
    state, start = ckpts.restore_latest(state)
    # every process keeps the log (early stopping reads it, and all must stop at the same step);
    # only the main one writes it
    log = MetricsLog(run_dir / "metrics.jsonl", write=is_main)
    log.truncate_after(start)
    ckpts.drop_best_after(start)
    evals = log.evals()
    metric = exp.metric
    best_score = max((_score(e, metric) for e in evals), default=-1.0)
    writer = _tensorboard_writer(run_dir) if (tp.tensorboard and is_main) else None
    lr_fn = learning_rate_schedule(tp)
    described = input_state(exp.train_data, start, tp.batch_size, tp.seed)  # the data do not change in a run

    def input_at(step: int) -> dict:
        return {**described, "next_step": step}

    if start:
        saved = ckpts.input_state(start)
        if saved is not None:  # checkpoints from before input positions were saved have none
            check_input_state(saved, input_at(start), f"resuming {run_dir.name} from step {start}")
        print(f"resuming {run_dir.name} from step {start}")

    def batches():
        # several threads build batches (stlib.data.pipeline); this one shards them onto the mesh
        for b in TrainBatches(exp.train_data, tp.batch_size, tp.seed, start, tp.steps,
                              jax.process_index(), jax.process_count()):
            yield sharding.shard_batch(b, exp.mesh)

    stopped_early = early_stop_due(evals, tp.early_stop_patience, metric)
    t0, cpu0, step = time.time(), time.process_time(), start
    trained = 0
    # Outside a terminal (papermill, logs) redraw every 30 s so the executed notebook stays small.
    bar = tqdm(total=tp.steps, initial=start, desc=p.name, disable=not (progress and is_main), unit="step",
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    # the run's progress for the command that started it, when it runs nested (stlib.progress)
    reporter = Reporter(run_dir.name, tp.steps, start=start, enabled=is_main)
    try:
        for batch in ([] if stopped_early else prefetch(batches())):
            state, metrics = exp.train_step(state, batch)
            step += 1
            trained += 1
            bar.update(1)
            reporter.update(step)
            is_eval = step % tp.eval_every == 0 or step == tp.steps
            is_ckpt = step % tp.checkpoint_every == 0 or is_eval
            if step % tp.log_every == 0 or is_ckpt:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not all(math.isfinite(v) for v in m.values()):
                    good = ckpts.latest_step()
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step} ({m}); the run stopped. "
                        f"Last good checkpoint: step {good} in {ckpts.dir / 'latest'}.")
                m["lr"] = float(lr_fn(step - 1))
                bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.3g}", refresh=False)
                log.append({"kind": "train", "step": step, **m})
                _write_scalars(writer, "train", step, m)
            if is_eval:
                ev = exp.evaluate(state)
                reporter.update(step, force=True, metric=metric, value=ev.get(metric), eval_step=step)
                improved = _score(ev, metric) > best_score
                if improved:
                    best_score = _score(ev, metric)
                    ckpts.save_best(step, state)
                log.append({"kind": "eval", "step": step, **ev})
                _write_scalars(writer, "val", step, ev)
                shown = "  ".join(f"{k} {ev[k]:.4f}" for k in exp.metric_keys[:2] if ev.get(k) is not None)
                bar.write(f"step {step}: val {shown}" + (" (best)" if improved else ""))
            if is_ckpt:
                ckpts.save(step, state, input_at(step))
            if is_eval and early_stop_due(log.evals(), tp.early_stop_patience, metric):
                stopped_early = True
                bar.write(f"early stopping at step {step}: no {metric} gain in {tp.early_stop_patience} evaluations")
                break
    finally:
        bar.close()
        reporter.update(step, force=True)
        if writer is not None:
            writer.flush()
    elapsed, cpu = time.time() - t0, time.process_time() - cpu0
    if trained and is_main:
        # cpu_seconds: this process's CPU time (all its threads), which runs sharing the machine do
        # not inflate as they do wall time; `stlib.experiments.cost` estimates from it
        log.append({"kind": "session", "step": step, "steps": trained, "seconds": round(elapsed, 1),
                    "cpu_seconds": round(cpu, 1)})
    sessions = [e for e in log.entries if e["kind"] == "session"]
    evals = log.evals()
    best = max(evals, key=lambda e: _score(e, metric)) if evals else None
    result = {
        "run_id": run_dir.name, "status": "complete",
        **({k: best.get(k) for k in exp.metric_keys} if best else {}),
        "best_step": best["step"] if best else None,
        "last_step": step, "stopped_early": stopped_early,
        "sessions": len(sessions), "train_seconds": round(sum(e["seconds"] for e in sessions), 1),
        "cpu_seconds": (round(sum(e["cpu_seconds"] for e in sessions), 1)
                        if sessions and all("cpu_seconds" in e for e in sessions) else None),
        "images_per_s": (round(sum(e["steps"] for e in sessions) * tp.batch_size
                               / sum(e["seconds"] for e in sessions), 2) if sessions else None),
        "num_params": count_params(state.params), "devices": exp.mesh.devices.size,
        "platform": jax.devices()[0].platform, "train_images": len(exp.train_data),
        "val_images": len(exp.val_data),
        "data_stats": {"train": {**exp.train_source.stats, **getattr(exp.train_data, "stats", {})},
                       "val": {**exp.val_source.stats, **getattr(exp.val_data, "stats", {})}},
        "streams": {name: {"examples_per_batch": exp.train_data.sizes[name], "images": len(d)}
                    for name, d in exp.train_data.streams.items()} if hasattr(exp.train_data, "streams") else None,
        **(exp.summary() if hasattr(exp, "summary") else {}),
        "last_train_metrics": next((e for e in reversed(log.entries) if e["kind"] == "train"), None),
        # what a run that starts from this one (a student, a detector on this init) is addressed by
        "checkpoint_digest": ckpts.best_digest(),
        "machine": machine(),
    }
    if is_main:
        write_json_atomic(run_dir / "metrics.json", result)
    ckpts.close()
    sharding.barrier(f"{run_dir.name} finished")
    return result


def load_best_state(task, run_dir):
    """The best checkpoint of a finished run of `task` as a TrainState (for plots and predictions)."""
    ck = Checkpoints(Path(run_dir) / "checkpoints")
    try:
        return ck.restore_best(task.init_state())
    finally:
        ck.close()
