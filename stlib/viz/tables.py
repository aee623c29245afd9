"""The paper's tables and Figure 1 as we measured them, beside the paper's own numbers.

`paper_layout` lays our per-seed results out in a table's own rows and columns, each cell as
mean +- 95% t interval over seeds in the paper's points, with the difference the paper prints
beside it ("(+1.3) 45.6") computed seed by seed against the same reference cell. `write_result`
writes that table as markdown, csv and LaTeX, the verdict on every claim
(`stlib.experiments.paper.verdicts`) and a json of everything, into one folder
(`outputs/paper/<scale>/` by convention). `plot_figure1` draws Figure 1's two panels, ours above
the paper's.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from stlib import paths
from stlib.experiments import paper as pp
from stlib.experiments.study import t_interval
from stlib.io import write_bytes_atomic, write_json_atomic, write_text_atomic


def _stats(values: list) -> dict:
    vals = [pp.POINTS * v for v in values]
    if not vals:
        return {"n": 0, "mean": None, "ci95": None}
    return {"n": len(vals), "mean": sum(vals) / len(vals), "ci95": t_interval(vals) if len(vals) > 1 else None}


def paper_layout(result: pp.Result, ours: dict) -> list[dict]:
    """One dict per (row, column) the spec makes, in the spec's order: `ours` {n, mean, ci95} and
    `ours_delta` (the paired contrast with the cell's reference, as `judge` gives it, or None), and
    `paper` / `paper_delta` (the printed numbers; Figure 1's points where its tables give them)."""
    out = []
    for (row, col) in result.cells.values():
        cell = {"row": row, "column": col, "ours": _stats(list((ours.get((row, col)) or {}).values()))}
        paper = result.table["cells"].get((row, col)) if "cells" in result.table else None
        if paper is None and "panels" in result.table:
            paper = pp.PaperCell(pp.figure_value(result.table, (row, col)))
        cell["paper"] = paper.value if paper else None
        cell["paper_delta"] = paper.delta if paper else None
        ref = pp.reference(result.table, row, col) if "cells" in result.table else None
        cell["ours_delta"] = None
        if ref is not None and ref in set(result.cells.values()):
            claim = pp.Claim(result.item, "", (((row, col), 1.0), (ref, -1.0)), 1, None, "")
            j = pp.judge(claim, ours)
            cell["ours_delta"] = {k: j[k] for k in ("n", "mean", "ci95")} if j["n"] else None
        out.append(cell)
    return out


def _pm(mean, ci) -> str:
    if mean is None:
        return ""
    return f"{mean:.1f}" + ("" if ci is None or math.isnan(ci) else f" ± {ci:.1f}")


def _ours_text(c: dict) -> str:
    o = c["ours"]
    if not o["n"]:
        return "not run"
    d = c["ours_delta"]
    delta = "" if not d or d["mean"] is None else f"({d['mean']:+.1f}" + (
        "" if d["ci95"] is None or math.isnan(d["ci95"]) else f" ± {d['ci95']:.1f}") + ") "
    return delta + _pm(o["mean"], o["ci95"])


def _paper_text(c: dict) -> str:
    if c["paper"] is None:
        return "—"
    return (f"({c['paper_delta']:+.1f}) " if c["paper_delta"] is not None else "") + f"{c['paper']:.1f}"


def _grid(result: pp.Result, layout: list[dict]):
    rows = list(dict.fromkeys(c["row"] for c in layout))
    cols = list(dict.fromkeys(c["column"] for c in layout))
    at = {(c["row"], c["column"]): c for c in layout}
    return rows, cols, at


def _row_name(result: pp.Result, row: str) -> str:
    return f"{row} [ours: {result.labels[row]}]" if row in result.labels else row


def table_markdown(result: pp.Result, layout: list[dict]) -> str:
    """The table in the paper's layout: each column as ours | paper."""
    rows, cols, at = _grid(result, layout)
    head = "| Setup | " + " | ".join(f"{c} (ours) | {c} (paper)" for c in cols) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(cols))]
    for r in rows:
        cells = []
        for c in cols:
            cell = at.get((r, c))
            cells += [_ours_text(cell), _paper_text(cell)] if cell else ["", ""]
        lines.append(f"| {_row_name(result, r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$")):
        s = s.replace(a, b)
    return s


def table_latex(result: pp.Result, layout: list[dict]) -> str:
    """A booktabs tabular of `table_markdown`'s cells, ours above the paper's in each column."""
    rows, cols, at = _grid(result, layout)
    lines = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
             "Setup & " + " & ".join(_latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for r in rows:
        ours = [_latex_escape(_ours_text(at[(r, c)])) if (r, c) in at else "" for c in cols]
        paper = [_latex_escape(_paper_text(at[(r, c)])) if (r, c) in at else "" for c in cols]
        lines.append(_latex_escape(_row_name(result, r)) + " (ours) & " + " & ".join(ours) + r" \\")
        lines.append(r"\quad paper & " + " & ".join(paper) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("row", "column", "n", "ours_mean", "ours_ci95", "ours_delta", "ours_delta_ci95", "paper", "paper_delta")


def table_csv(layout: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for c in layout:
        d = c["ours_delta"] or {}
        w.writerow({"row": c["row"], "column": c["column"], "n": c["ours"]["n"], "ours_mean": c["ours"]["mean"],
                    "ours_ci95": c["ours"]["ci95"], "ours_delta": d.get("mean"), "ours_delta_ci95": d.get("ci95"),
                    "paper": c["paper"], "paper_delta": c["paper_delta"]})
    return buf.getvalue()


def verdicts_markdown(verdicts: list[dict]) -> str:
    """One line per claim: the paper's contrast, ours (mean ± 95% interval over paired seeds), verdict."""
    lines = ["| claim | paper | ours (paired over seeds) | seeds | verdict |", "|---|---|---|---|---|"]
    for v in verdicts:
        paper = "" if v["paper"] is None else f"{v['paper']:+.1f}"
        ours = "not run" if v["mean"] is None else (
            f"{v['mean']:+.1f}" + ("" if v["ci95"] is None or math.isnan(v["ci95"]) else f" ± {v['ci95']:.1f}"))
        lines.append(f"| {v['claim']} | {paper} | {ours} | {v['n']} | {v['verdict'] or 'not measured'} |")
    return "\n".join(lines) + "\n"


def write_result(result: pp.Result, ours: dict, out_dir, scale: str = "") -> dict:
    """`<item>.md` (the table, the verdicts, the seeds), `<item>.csv`, `<item>.tex` and `<item>.json`
    in `out_dir`; returns {"layout", "verdicts", "files"}."""
    out_dir = Path(out_dir)
    layout = paper_layout(result, ours)
    verdicts = pp.verdicts(result, ours)
    seeds = sorted({s for d in ours.values() for s in d})
    title = result.item.replace("table", "Table ").replace("figure", "Figure ")
    md = (f"# {title}{f' at {scale} scale' if scale else ''}: ours beside the paper's\n\n"
          f"{result.table.get('caption', '')}\n\n"
          f"Ours: {result.study.metric} in points, mean ± 95% t interval over seeds {seeds} "
          f"(study `{result.study.name}`, spec `{paths.relative(result.path)}`); a difference in parentheses is taken seed "
          "by seed against the cell the paper compares with. Paper: as printed "
          "(params/paper_numbers.yaml).\n\n" + table_markdown(result, layout)
          + "\nClaims (reproduced / refuted: the 95% interval of the paired difference excludes 0 on the "
            "paper's side / the other side; inconclusive: it holds 0, or one seed):\n\n"
          + verdicts_markdown(verdicts)
          + (f"\n{result.table['notes']}\n" if result.table.get("notes") else ""))
    files = {"md": out_dir / f"{result.item}.md", "csv": out_dir / f"{result.item}.csv",
             "tex": out_dir / f"{result.item}.tex", "json": out_dir / f"{result.item}.json"}
    write_text_atomic(files["md"], md)
    write_text_atomic(files["csv"], table_csv(layout))
    write_text_atomic(files["tex"], table_latex(result, layout))
    write_json_atomic(files["json"], {"item": result.item, "scale": scale, "study": result.study.name,
                                      "spec": paths.relative(result.path), "seeds": seeds, "metric": result.study.metric,
                                      "layout": layout, "verdicts": verdicts})
    return {"layout": layout, "verdicts": verdicts, "files": files}


def plot_figure1(result: pp.Result, ours: dict, path=None):
    """Figure 1's two panels (AP against augmentation strength, and against labeled-data size, one
    line per init), ours in the top row with 95% intervals, the paper's below. Saved as png and pdf
    next to `path` when given; returns the figure."""
    import matplotlib
    import matplotlib.pyplot as plt
    import seaborn as sns
    panels = result.table["panels"]
    fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 7), squeeze=False)
    palette = dict(zip(dict.fromkeys(s for p in panels.values() for s in p["series"]), sns.color_palette("deep")))
    for j, (name, panel) in enumerate(panels.items()):
        xs = [x for x in panel["x"] if x in {c for _, c in result.cells.values()}]
        for series in panel["series"]:
            st = [_stats(list((ours.get((series, x)) or {}).values())) for x in xs]
            pts = [(i, s["mean"], s["ci95"]) for i, s in enumerate(st) if s["mean"] is not None]
            if pts:
                axes[0, j].errorbar([p[0] for p in pts], [p[1] for p in pts],
                                    yerr=[0 if p[2] is None or math.isnan(p[2]) else p[2] for p in pts],
                                    marker="o", capsize=3, label=series, color=palette[series])
            paper = [(i, v) for i, v in enumerate(panel["series"][series]) if v is not None]
            axes[1, j].plot([p[0] for p in paper], [p[1] for p in paper], marker="o", label=series,
                            color=palette[series])
        for i, ax in enumerate(axes[:, j]):
            ticks = xs if i == 0 else panel["x"]
            ax.set_xticks(range(len(ticks)), ticks)
            ax.set_ylabel(f"{result.study.metric} ({'ours' if i == 0 else 'paper'})")
            ax.set_title(f"{name}: {'ours' if i == 0 else 'the paper (Figure 1)'}")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        for suffix in (".png", ".pdf"):
            buf = io.BytesIO()
            fig.savefig(buf, format=suffix[1:], dpi=120)
            write_bytes_atomic(path.with_suffix(suffix), buf.getvalue())
    if matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    return fig

