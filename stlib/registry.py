"""Small name -> component registries, as big_vision and scenic pick components by name.

Each registry lives with the components it names (`stlib.augment.POLICIES`,
`stlib.data.sources.SOURCES`, `stlib.tasks.PRETRAIN_METHODS`, ...), and the components
register themselves where they are defined, so a name is written once. A registry that
serves a params field (`field="augment.policy"`) is what `check_choices` asks: the params
schema (`stlib.config`) holds no list of choices of its own.

    POLICIES = Registry("augment policy", field="augment.policy")

    @POLICIES.register("s1")
    def augment_s1(key, example, aug): ...

`POLICIES.get("s9")` raises `ParamsError` naming the field, the value and the known names.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterator

from stlib.config import ParamsError

_SERVING: list["Registry"] = []   # registries that serve a params field, in creation order

class Registry(Mapping):
    """An ordered mapping name -> component, filled with `register`.

    Args:
      what: what the names are ("augment policy"), for messages.
      field: the dotted params field(s) whose value picks a name ("augment.policy"), or None.
      key: how a field's value maps to a name (default: the value itself); a value that maps
        to None (e.g. an empty, optional field) is not checked.
      check: an optional `check(params)` raising `ParamsError`, run by `check_choices` once the
        names are known: the cross-field rules only the components know (e.g. the identity
        neck needs a backbone that outputs P3-P7).
    """

    def __init__(self, what: str, field: str | tuple[str, ...] | None = None,
                 key: Callable[[Any], str | None] | None = None,
                 check: Callable[[Any], None] | None = None):
        self.what = what
        self.fields = (field,) if isinstance(field, str) else tuple(field or ())
        self.key = key or (lambda v: v)
        self.check = check
        self._items: dict[str, Any] = {}
        if self.fields:
            _SERVING.append(self)

    def register(self, name: str, obj: Any = None):
        """Registers `obj` under `name`; without `obj`, a decorator that registers what it decorates."""
        def add(o):
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = o
            return o
        return add if obj is None else add(obj)

    def get(self, name: str, what: str | None = None) -> Any:
        """The component named `name`, or a `ParamsError` naming the field and the known names."""
        if name not in self._items:
            label = what or (self.fields[0] if self.fields else self.what)
            raise ParamsError(f"{label} {name!r}: unknown {self.what} (known: {'|'.join(self._items)})")
        return self._items[name]

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._items)})"


def field_value(params, dotted: str):
    obj = params
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def check_choices(params) -> None:
    """Every registry-backed field of `params` names a registered component (`ParamsError` else),
    then each registry's own cross-field `check`.

    `stlib.config.load_params` checks keys, types and ranges; this checks the names against the
    registries that have been imported. `stlib.experiments` imports every module that defines
    one (`stlib.experiments.assemble` imports the tasks, pseudo labelling, the data, augment,
    model, postprocess and optimizer modules), and it, `stlib.cli` and the studies call this
    before any run starts; the serving registries are listed in tests/test_config.py.
    """
    for reg in _SERVING:
        for dotted in reg.fields:
            name = reg.key(field_value(params, dotted))
            if name is not None:
                reg.get(name, what=dotted)
    for reg in _SERVING:
        if reg.check is not None:
            reg.check(params)


def serving() -> list[Registry]:
    """The registries that serve a params field and have been imported (for tests and documentation)."""
    return list(_SERVING)
