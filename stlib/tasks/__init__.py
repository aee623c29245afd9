"""Tasks: one file per kind of run, each registering itself (`stlib.tasks.base`).

Every module of this package is imported here, so a new task is one new file (plus its
params): `@TASKS.register("<model.head>")` or `@PRETRAIN_METHODS.register("<method>")`
on its class makes `task_for` find it.
"""
from __future__ import annotations

import importlib
import pkgutil

from stlib.tasks.base import PRETRAIN_METHODS, TASKS, TaskInputs, task_for

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["PRETRAIN_METHODS", "TASKS", "TaskInputs", "task_for"]
