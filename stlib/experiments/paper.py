"""The paper's results as data, and the verdict on each of its claims from our runs.

`load_numbers` reads the paper's printed tables (params/paper_numbers.yaml: every number with its
table). A claim is a signed comparison the paper makes: each difference it prints beside a value
("(+1.3) 45.6": self-training adds 1.3 AP over Rand Init) is one, and `paper_numbers.yaml` adds the
trends its text states (Sec. 4.1: pre-training's value falls as augmentation gets stronger).
`judge` turns our per-seed results into a verdict on a claim: the claim's contrast (e.g. student
minus teacher, or a difference of differences) is computed seed by seed, so the seeds pair the
runs, and its two-sided 95% t interval decides:

- **reproduced**: the interval excludes 0 on the side of the paper's sign;
- **refuted**: it excludes 0 on the other side;
- **inconclusive**: it contains 0, or there are fewer than two seeds.

Our AP is a fraction (COCO eval); the paper prints points, so `POINTS` scales ours for display.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import yaml

from stlib import paths
from stlib.config import ParamsError
from stlib.experiments import cost
from stlib.experiments.study import Study, make_study, read_spec, t_interval

NUMBERS = paths.PARAMS_DIR / "paper_numbers.yaml"
POINTS = 100.0   # our fraction -> the paper's points (AP, mIoU in %)
VERDICTS = ("reproduced", "refuted", "inconclusive")

_CELL = re.compile(r"^\(\s*([+-]\d+(?:\.\d+)?)\s*\)\s*(-?\d+(?:\.\d+)?)$")


@dataclasses.dataclass(frozen=True)
class PaperCell:
    value: float | None            # the number printed (None: the paper prints none)
    delta: float | None = None     # the difference printed beside it, "(+1.3)"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A signed contrast of table cells: sum(weight x cell) has the paper's `sign` (+1 / -1).
    `terms` are ((row, column), weight); `paper` is the contrast in the paper's numbers."""
    table: str
    name: str
    terms: tuple
    sign: int
    paper: float | None
    source: str


def parse_cell(x, where: str = "") -> PaperCell:
    """A cell as paper_numbers.yaml writes it: a number, "(+d) v", or null."""
    if x is None:
        return PaperCell(None)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return PaperCell(float(x))
    m = _CELL.match(str(x).strip())
    if not m:
        raise ValueError(f"{where}: a cell must be a number, \"(+d) v\" or null, got {x!r}")
    return PaperCell(float(m.group(2)), float(m.group(1)))


def _table(name: str, t: dict, where: str) -> dict:
    cols = list(t.get("columns") or [])
    rows = t.get("rows") or {}
    if not cols or not rows:
        raise ValueError(f"{where}: {name} needs `columns` and `rows`")
    cells = {}
    for row, vals in rows.items():
        if len(vals) != len(cols):
            raise ValueError(f"{where}: {name}.rows[{row!r}] has {len(vals)} cells for {len(cols)} columns")
        for col, v in zip(cols, vals):
            cells[(row, col)] = parse_cell(v, f"{where}: {name}.rows[{row!r}][{col!r}]")
    deltas = t.get("deltas") or {}
    unknown = set(deltas) - {"rows", "columns"}
    if unknown:
        raise ValueError(f"{where}: {name}.deltas takes `rows` or `columns`, got {sorted(unknown)}")
    for kind, names in (("rows", rows), ("columns", cols)):
        for a, b in (deltas.get(kind) or {}).items():
            if a not in names or b not in names:
                raise ValueError(f"{where}: {name}.deltas.{kind}: {a!r} -> {b!r} names no {kind[:-1]} of the table")
    return {"caption": t.get("caption", ""), "metric": t.get("metric", "AP"), "rows": list(rows), "columns": cols,
            "cells": cells, "deltas": {k: dict(deltas.get(k) or {}) for k in ("rows", "columns")},
            "claims": list(t.get("claims") or []), "notes": t.get("notes", "")}


def load_numbers(path=None) -> dict:
    """{table name: {caption, metric, rows, columns, cells {(row, col): PaperCell}, deltas, claims,
    notes}} and, for Figure 1, its panels as written. Errors name the file and the key."""
    path = Path(path or NUMBERS)
    raw = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, t in raw.items():
        if "panels" in t:
            out[name] = {"caption": t.get("caption", ""), "metric": t.get("metric", "AP"), "panels": t["panels"],
                         "claims": list(t.get("claims") or [])}
        else:
            out[name] = _table(name, t, str(path))
    return out


def reference(table: dict, row: str, col: str) -> tuple[str, str] | None:
    """The cell a printed difference of (row, col) is taken against, or None."""
    if row in table["deltas"]["rows"]:
        return table["deltas"]["rows"][row], col
    if col in table["deltas"]["columns"]:
        return row, table["deltas"]["columns"][col]
    return None


def _contrast(terms, value) -> float | None:
    vals = [value(cell) for cell, _ in terms]
    if any(v is None for v in vals):
        return None
    return sum(w * v for (_, w), v in zip(terms, vals))


def claims(name: str, table: dict) -> list[Claim]:
    """Every claim of a table: one per printed difference (cell minus its reference, with the
    printed sign), then the trends paper_numbers.yaml lists under `claims` (a contrast of cells
    `terms: [[row, column, weight], ...]` with the `sign` the paper's text gives)."""
    out = []
    if "cells" in table:
        for (row, col), cell in table["cells"].items():
            ref = reference(table, row, col)
            if ref is None or cell.delta is None or cell.delta == 0:
                continue
            label = f"{row} vs {ref[0]} ({col})" if ref[0] != row else f"{col} vs {ref[1]} ({row})"
            out.append(Claim(name, label, (((row, col), 1.0), (ref, -1.0)), 1 if cell.delta > 0 else -1,
                             cell.delta, f"{name}: printed ({cell.delta:+.1f})"))
    value = (lambda c: table["cells"][c].value) if "cells" in table else (lambda c: figure_value(table, c))
    for c in table.get("claims", []):
        terms = tuple(((r, col), float(w)) for r, col, w in c["terms"])
        paper = _contrast(terms, value)
        out.append(Claim(name, c["name"], terms, int(c["sign"]), paper, c.get("source", name)))
    return out


def figure_value(fig: dict, cell) -> float | None:
    """Figure 1's point (series, x) as paper_numbers.yaml gives it, or None."""
    series, x = cell
    for panel in fig["panels"].values():
        if series in panel["series"] and x in panel["x"]:
            return panel["series"][series][panel["x"].index(x)]
    return None


def judge(claim: Claim, ours: dict, confidence: float = 0.95) -> dict:
    """The verdict on `claim` from `ours` {(row, column): {seed: value}} (fractions as runs report
    them): the contrast per seed that every term has, its mean, sample std and t interval, in the
    paper's points. Missing cells give verdict None (not measured)."""
    per_cell = [ours.get(cell) or {} for cell, _ in claim.terms]
    seeds = sorted(set.intersection(*(set(d) for d in per_cell))) if per_cell else []
    out = {"claim": claim.name, "table": claim.table, "sign": claim.sign, "paper": claim.paper, "n": len(seeds),
           "seeds": seeds}
    if not seeds:
        return {**out, "mean": None, "std": None, "ci95": None, "verdict": None}
    diffs = [POINTS * sum(w * d[s] for (_, w), d in zip(claim.terms, per_cell)) for s in seeds]
    n, mean = len(diffs), sum(diffs) / len(diffs)
    if n < 2:
        return {**out, "mean": mean, "std": None, "ci95": None, "diffs": diffs, "verdict": "inconclusive"}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_interval(diffs, confidence)
    lo, hi = mean - half, mean + half
    if lo > 0 or hi < 0:
        verdict = "reproduced" if (1 if lo > 0 else -1) == claim.sign else "refuted"
    else:
        verdict = "inconclusive"
    return {**out, "mean": mean, "std": sd, "ci95": half, "diffs": diffs, "verdict": verdict}


# --- result specs: a paper table's cells as runs -------------------------------------------------
# params/<scale>/results/<item>.yaml: which runs make each cell of a table. Rows and columns are the
# paper's (paper_numbers.yaml); a cell's params are base <- overrides <- its column's <- its row's. In a
# row's or column's overrides `{row}` and `{col}` stand for the cell's own row and column, and
# `key=@Row` names the run of row `Row` in the same column and seed (a student's teacher);
# `key=@Row | Column` names any cell. Cells are expanded into an ordinary study, so runs are
# cached, shared and recorded as every study's are: Table 2's S4 Rand Init cell is the run of
# Table 3's 100% one when their params agree.
# `labels` (optional) names our model beside a paper row where the scale swaps it (Table 5's
# SpineNet-190 at 1280 px is the smoke / mini SpineNet): {paper row: ours}.
RESULT_KEYS = ("result", "name", "description", "base", "overrides", "seeds", "notebook", "columns", "rows", "skip",
               "labels")


@dataclasses.dataclass(frozen=True)
class Result:
    item: str            # the paper's table or figure (a key of paper_numbers.yaml)
    study: Study
    cells: dict          # study cell label -> (row, column)
    table: dict          # load_numbers()[item]
    path: str
    labels: dict = dataclasses.field(default_factory=dict)   # paper row -> our model there, where it differs


def cell_label(row: str, col: str) -> str:
    return f"{row} | {col}"


def _expand(override: str, row: str, col: str) -> str:
    o = override.replace("{row}", row).replace("{col}", col)
    key, sep, value = o.partition("=")
    value = value.strip()
    if sep and value.startswith("@") and " | " not in value:
        return f"{key}=@{cell_label(value[1:], col)}"
    return o


def _names(table: dict, axis: str) -> list:
    if "cells" in table:
        return table["rows" if axis == "rows" else "columns"]
    key = "series" if axis == "rows" else "x"
    return list(dict.fromkeys(n for p in table["panels"].values() for n in p[key]))


def load_result(path, seeds: int = 0, numbers: dict | None = None) -> Result:
    """A result spec (above) as a `Result`: seeds 0..`seeds`-1 when `seeds` > 0, else the spec's.
    Errors name the file and the key, and every cell's params are checked before any run starts
    (`make_study`)."""
    path = paths.preset(path)
    raw = read_spec(path)
    unknown = sorted(set(raw) - set(RESULT_KEYS))
    if unknown:
        raise ParamsError(f"{path}: unknown key(s) {unknown} (known: {', '.join(RESULT_KEYS)})")
    for key in ("result", "name", "base", "rows", "columns"):
        if key not in raw:
            raise ParamsError(f"{path}: missing required key {key!r}")
    numbers = numbers if numbers is not None else load_numbers()
    if raw["result"] not in numbers:
        raise ParamsError(f"{path}: result {raw['result']!r} is not in {NUMBERS.name} ({', '.join(numbers)})")
    table = numbers[raw["result"]]
    axes = {}
    for axis in ("rows", "columns"):
        spec = raw[axis]
        if not isinstance(spec, dict) or not spec:
            raise ParamsError(f"{path}: {axis} must be a mapping of the paper's {axis} to lists of overrides")
        known = _names(table, axis)
        for name, ov in spec.items():
            if name not in known:
                raise ParamsError(f"{path}: {axis}: {name!r} is not a {axis[:-1]} of the paper's {raw['result']} "
                                  f"({', '.join(map(str, known))})")
            if not isinstance(ov, list) or not all(isinstance(o, str) for o in ov):
                raise ParamsError(f"{path}: {axis}.{name} must be a list of 'key=value' strings, got {ov!r}")
        axes[axis] = spec
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(r in axes["rows"] and isinstance(v, str) for r, v in labels.items()):
        raise ParamsError(f"{path}: labels must map rows of this spec to names of our models, got {labels!r}")
    skip = {tuple(s) for s in raw.get("skip") or []}
    for s in skip:
        if len(s) != 2 or s[0] not in axes["rows"] or s[1] not in axes["columns"]:
            raise ParamsError(f"{path}: skip: {list(s)!r} is not a [row, column] of this spec")
    cells, where = {}, {}
    for row, row_ov in axes["rows"].items():
        for col, col_ov in axes["columns"].items():
            if (row, col) in skip:
                continue
            label = cell_label(row, col)
            cells[label] = [_expand(o, row, col) for o in (*col_ov, *row_ov)]
            where[label] = (row, col)
    if not isinstance(seeds, int) or seeds < 0:
        raise ParamsError(f"{path}: seeds must be a count >= 0 (0: the spec's), got {seeds!r}")
    study = make_study({"name": raw["name"], "base": raw["base"], "cells": cells,
                        "seeds": list(range(seeds)) if seeds else raw.get("seeds", [0]),
                        "overrides": raw.get("overrides", []), "notebook": raw.get("notebook", "train.ipynb"),
                        "description": raw.get("description", f"the paper's {raw['result']}"),
                        "metric": table.get("metric", "AP")}, path)
    return Result(raw["result"], study, where, table, str(path), dict(labels))


def measured(result: Result, rows: list[dict]) -> dict:
    """{(row, column): {seed: value}} from a study's `results` rows."""
    out: dict = {}
    for r in rows:
        if r["cell"] in result.cells and r.get(result.study.metric) is not None:
            out.setdefault(result.cells[r["cell"]], {})[r["seed"]] = r[result.study.metric]
    return out


def verdicts(result: Result, ours: dict) -> list[dict]:
    """`judge` on every claim of the result's table whose cells the spec makes."""
    made = set(result.cells.values())
    return [{**judge(c, ours), "source": c.source} for c in claims(result.item, result.table)
            if all(cell in made for cell, _ in c.terms)]


# --- the items `stlib reproduce` runs --------------------------------------------------------------
ITEMS = ("figure1", "table2", "table3", "table4", "table5", "table6", "table7", "table8")   # notebooks/<item>.ipynb


def result_spec(item: str, scale: str) -> Path:
    """params/<scale>/results/<item>.yaml; an unknown item or a missing spec is an error naming it."""
    if item not in ITEMS:
        raise ParamsError(f"unknown result {item!r} (one of {', '.join(ITEMS)})")
    path = paths.PARAMS_DIR / scale / "results" / f"{item}.yaml"
    if not path.is_file():
        have = available(scale)
        raise ParamsError(f"no result spec {paths.relative(path)} for {item} at the {scale} scale"
                          + (f" (specs there: {', '.join(have)})" if have else " (none there yet)"))
    return path


def available(scale: str) -> list[str]:
    """The items with a result spec at `scale`, in `ITEMS` order."""
    return [i for i in ITEMS if (paths.PARAMS_DIR / scale / "results" / f"{i}.yaml").is_file()]


def plan_results(results: list[Result], outputs=None) -> dict:
    """`stlib.experiments.cost.estimate` over several results, each run once (a cell several items
    share is listed under the first; its cell named `item: row | column`)."""
    rows, seen, total, unpriced, cores = [], set(), 0.0, 0, None
    for res in results:
        est = cost.estimate(res.study, outputs)
        cores = est["cores"]
        for r in est["rows"]:
            if r["run_id"] in seen:
                continue
            seen.add(r["run_id"])
            rows.append({**r, "cell": f"{res.item}: {r['cell']}"})
            if not r["complete"]:
                total += r.get("cpu_seconds", 0.0)
                unpriced += "cpu_seconds" not in r
    return {"rows": rows, "cpu_seconds": total, "unpriced": unpriced, "cores": cores}


def plan_markdown(results: list[Result], est: dict) -> str:
    name = ", ".join(r.item for r in results)
    return cost.estimate_markdown(dataclasses.replace(results[0].study, name=f"{name} (each run once)"), est)
