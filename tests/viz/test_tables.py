import csv
import io
import math

import matplotlib
import pytest

from stlib.experiments import paper as pp
from stlib.experiments.study import plan
from stlib.viz import tables

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def table3():
    return pp.load_result("params/smoke/results/table3.yaml")


def _ours(result, value, seeds=(0, 1, 2)):
    """Fabricated per-seed results: value(row, col, seed) as a fraction."""
    return {cell: {s: value(*cell, s) for s in seeds} for cell in result.cells.values()}


def test_table3_in_the_papers_layout_with_paired_differences(table3, tmp_path):
    # teachers vary by seed; each student is its own teacher + 2 points + 0.1 x seed
    def value(row, col, s):
        base = {"20% Dataset": 0.20, "50% Dataset": 0.30, "100% Dataset": 0.40}[col] + 0.03 * s
        return base + (0.02 + 0.001 * s if "Self-training" in row else 0.0)
    ours = _ours(table3, value)
    out = tables.write_result(table3, ours, tmp_path, scale="smoke")
    layout = {(c["row"], c["column"]): c for c in out["layout"]}
    assert len(layout) == 18
    st = layout[("Rand Init w/ ImageNet Self-training", "20% Dataset")]
    assert st["ours"]["mean"] == pytest.approx(100 * (0.23 + 0.021)) and st["ours"]["n"] == 3
    assert st["ours_delta"]["mean"] == pytest.approx(2.1) and st["ours_delta"]["ci95"] < 0.5
    assert (st["paper"], st["paper_delta"]) == (34.1, 3.4)
    assert layout[("Rand Init", "20% Dataset")]["ours_delta"] is None     # the paper prints no difference there
    md = out["files"]["md"].read_text()
    assert "| Setup | 20% Dataset (ours) | 20% Dataset (paper) |" in md
    assert "| Rand Init w/ ImageNet Self-training | (+2.1 ± 0.2) 25.1 ± 7.7 | (+3.4) 34.1 |" in md
    assert md.count("| reproduced |") == 9            # every self-training gain is a paired +2.0..2.2
    rows = list(csv.DictReader(io.StringIO(out["files"]["csv"].read_text())))
    assert len(rows) == 18 and float(rows[3]["ours_delta"]) == pytest.approx(2.1)
    tex = out["files"]["tex"].read_text()
    assert r"20\% Dataset" in tex and r"$\pm$" in tex and tex.count(r"\\") == 1 + 2 * 6


def test_unrun_cells_and_one_seed(table3, tmp_path):
    ours = _ours(table3, lambda r, c, s: 0.3, seeds=(0,))
    del ours[("ImageNet++ Init", "100% Dataset")]
    out = tables.write_result(table3, ours, tmp_path)
    md = out["files"]["md"].read_text()
    assert "| ImageNet++ Init | 30.0 | 35.9 | 30.0 | 39.9 | not run | 43.8 |" in md
    v = {x["claim"]: x for x in out["verdicts"]}
    assert v["ImageNet++ Init w/ ImageNet Self-training vs ImageNet++ Init (100% Dataset)"]["verdict"] is None
    assert v["Rand Init w/ ImageNet Self-training vs Rand Init (20% Dataset)"]["verdict"] == "inconclusive"
    assert "| not measured |" in md


def test_figure1_shares_its_s4_point_and_draws_both_panels(tmp_path):
    fig1 = pp.load_result("params/smoke/results/figure1.yaml")
    ids = {r["cell"]: r["run_id"] for r in plan(fig1.study, tmp_path) if r["seed"] == 0}
    assert ids["Rand Init | Augment-S4"] == ids["Rand Init | 100%"] != ids["Rand Init | 20%"]
    ours = _ours(fig1, lambda r, c, s: 0.1 + 0.01 * s + (0.05 if r != "Rand Init" else 0.0))
    tables.plot_figure1(fig1, ours, tmp_path / "figure1")
    assert (tmp_path / "figure1.png").stat().st_size > 10_000 and (tmp_path / "figure1.pdf").is_file()
    out = tables.write_result(fig1, ours, tmp_path)
    v = {x["claim"]: x for x in out["verdicts"]}
    trend = v["pre-training's value falls from Augment-S1 to Augment-S4 (full COCO)"]
    assert trend["mean"] == pytest.approx(0.0, abs=1e-9) and trend["verdict"] == "inconclusive"
    assert v["ImageNet Init helps at 20% of COCO (Augment-S4)"]["verdict"] == "reproduced"
    assert not math.isnan(out["layout"][0]["ours"]["ci95"])
