"""The house's layering, read from the source (AST): every stlib import points down the layer
order below, and no set of modules imports itself around a circle. Imports inside functions
count like any other: an import hidden in a function to dodge a circle is still a circle."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "stlib"

# Bottom to top (README "Layout"). A module may import modules of its own layer or of layers
# below it; within a layer the imports must not close a circle.
LAYERS = (
    ("stlib", "stlib.devices", "stlib.paths"),   # the package itself, host devices, the roots
    ("stlib.io", "stlib.config"),                # atomic files, the params schema
    ("stlib.registry", "stlib.errors", "stlib.progress"),   # registries, one-line errors, nested progress
    ("stlib.data",),
    ("stlib.augment",),
    ("stlib.models",),
    ("stlib.losses",),
    ("stlib.eval",),
    ("stlib.train",),                            # the engine: knows no task
    ("stlib.tasks",),                            # one file per kind of run
    ("stlib.pseudo",),                           # labelling with tasks.detection.Detector, the store
    ("stlib.experiments",),                      # inits, assembling runs, runs, studies, records
    ("stlib.viz",),
    ("stlib.cli", "stlib.launch", "stlib.notebook_setup"),   # the command line, its --processes launcher; the notebooks' setup cell
)


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: pathlib.Path, known: dict) -> set:
    """The stlib modules `name` imports (anywhere in the file), resolved to existing modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            # `from stlib import config` imports the module stlib.config; `from x import name` imports x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t.startswith("stlib") and t != name:
                out.add(t)
    return out


def layer_of(name: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for pre in prefixes:
            if name == pre or (pre != "stlib" and name.startswith(pre + ".")):
                if best is None or len(pre) > best[1]:
                    best = (i, len(pre))
    if best is None:
        raise AssertionError(f"{name}: in no layer of tests/test_architecture.py LAYERS; give it one")
    return best[0]


def graph() -> dict:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def upward_imports(g: dict) -> list:
    return sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                  for a, deps in g.items() for b in deps if layer_of(b) > layer_of(a))


def circles(g: dict) -> list:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_points_up_the_layers():
    assert upward_imports(graph()) == []


def test_no_import_circle():
    assert circles(graph()) == []


def test_the_engine_imports_no_task_no_pseudo_and_no_experiments():
    g = graph()
    engine = {a: sorted(b for b in deps if b.startswith(("stlib.tasks", "stlib.pseudo", "stlib.experiments")))
              for a, deps in g.items() if a.startswith("stlib.train")}
    assert {a: d for a, d in engine.items() if d} == {}


# The checker itself must catch what it is for: fed a made-up graph, it finds the faults.
def test_the_checks_catch_an_upward_import_and_a_circle():
    g = {"stlib.train.loop": {"stlib.tasks.detection"}, "stlib.tasks.detection": {"stlib.train.loop"},
         "stlib.data.a": {"stlib.data.b"}, "stlib.data.b": {"stlib.data.c"}, "stlib.data.c": {"stlib.data.a"}}
    assert upward_imports(g) == ["stlib.train.loop (layer 8) imports stlib.tasks.detection (layer 9)"]
    assert sorted(circles(g)) == [["stlib.data.a", "stlib.data.b", "stlib.data.c"],
                                  ["stlib.tasks.detection", "stlib.train.loop"]]


def test_imports_hidden_in_functions_count(tmp_path, monkeypatch):
    pkg = tmp_path / "stlib"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "loop.py").write_text("def f():\n    from stlib.experiments import runs\n")
    (pkg / "experiments").mkdir()
    (pkg / "experiments" / "__init__.py").write_text("")
    (pkg / "experiments" / "runs.py").write_text("from ..train import loop\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "ROOT", pkg)
    g = graph()
    assert g["stlib.train.loop"] == {"stlib.experiments.runs"}
    assert g["stlib.experiments.runs"] == {"stlib.train.loop"}
    with pytest.raises(AssertionError):
        test_no_import_points_up_the_layers()


# stlib modules that pull in an optional heavy dependency; they may be imported where they are used.
OPTIONAL_HEAVY = {"stlib.data.tfds_source"}   # tensorflow_datasets


def imports_inside_functions() -> list:
    out = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset > 0:
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m.startswith("stlib") and m not in OPTIONAL_HEAVY for m in mods) or \
                        (isinstance(node, ast.ImportFrom) and node.level):
                    out.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    return out


def test_stlib_imports_sit_at_the_top_of_the_file():
    assert imports_inside_functions() == []
