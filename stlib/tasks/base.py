"""What every task shares: the inputs it is handed, and the registries that pick a task.

A task is one kind of run (detection, supervised pre-training, Noisy Student, SimCLR, ...)
in the shape `stlib.train.loop.train_and_evaluate` drives. It builds its model, jitted steps
and labelled data streams from its params and the libraries below it (`stlib.data`,
`stlib.models`, `stlib.losses`, `stlib.eval`); anything that comes from another run (an init
checkpoint, a teacher's weights, pseudo-labelled streams) it is handed in `TaskInputs` by
`stlib.experiments.assemble`, which resolves and builds those once.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from stlib import config as cfg
from stlib.registry import Registry
from stlib.train import sharding

# model.head -> the task that trains it (a classifier head is picked by pretrain.method below)
TASKS = Registry("task (model.head)")
# pretrain.method -> the task that pre-trains a backbone that way
PRETRAIN_METHODS = Registry("pre-training method", field="pretrain.method")
CLASSIFICATION_HEAD = "classification"


def task_for(params: cfg.Params):
    """The task class that trains `params` (by `model.head`, and `pretrain.method` for classifiers)."""
    if params.model.head == CLASSIFICATION_HEAD:
        return PRETRAIN_METHODS.get(params.pretrain.method)
    return TASKS.get(params.model.head, what="model.head")


@dataclasses.dataclass
class TaskInputs:
    """What a task is handed instead of building it.

    mesh: the device mesh (None: `sharding.setup_mesh` of the params' batch sizes).
    init: `model.init` resolved to its checkpoint folder (None: Rand Init).
    sources: the task's labelled (train, val) sources when they are already open (the assembler
      opened them to check a teacher's classes); None: the task opens them from `params.data`.
    start_from: variables ({"params", "batch_stats"}) the whole model starts from, with a fresh
      optimizer: a self-training student from its teacher (Sec. 3.2); `start_from_name` says
      whose they are, for messages.
    streams, shares: extra training streams (name -> data) and their shares of each batch:
      pseudo-labelled images.
    summary: called at the end of training; its dict joins metrics.json (e.g. where the
      pseudo labels came from).
    """
    mesh: Any = None
    init: Path | None = None
    sources: tuple | None = None
    start_from: dict | None = None
    start_from_name: str = ""
    streams: dict = dataclasses.field(default_factory=dict)
    shares: dict = dataclasses.field(default_factory=dict)
    summary: Callable[[], dict] | None = None


def resolve_inputs(params: cfg.Params, inputs: TaskInputs | None) -> TaskInputs:
    """`inputs` with the mesh made when missing; a named or unresolved `model.init` without its
    folder handed in is an error (inits are resolved once, by `stlib.experiments`)."""
    inputs = inputs or TaskInputs()
    if params.model.init != "rand" and inputs.init is None:
        raise cfg.ParamsError(
            f"model.init {params.model.init!r}: a task is handed its init checkpoint folder; build the run "
            "with stlib.experiments.assemble.build_task(params), which resolves it")
    if inputs.mesh is None:
        inputs = dataclasses.replace(inputs, mesh=sharding.setup_mesh(params.train.batch_size,
                                                                      params.train.eval_batch_size))
    return inputs
