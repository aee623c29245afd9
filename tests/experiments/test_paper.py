import math

import pytest
from scipy import stats

from stlib.experiments import paper as pp


@pytest.fixture(scope="module")
def numbers():
    return pp.load_numbers()


def test_every_printed_difference_matches_the_values_it_compares(numbers):
    """A transcription check of params/paper_numbers.yaml: each "(+d) v" is v minus its reference
    cell. The paper rounds values and differences to one decimal each, so they may disagree by up
    to 0.15; two of its cells do by 0.1 (Table 2, ImageNet Init at S2: 40.7 - 41.5 printed -0.7,
    at S3: 43.2 - 43.9 printed -0.8), every other by less than 0.05."""
    assert {"table2", "table3", "table4", "table5", "table6", "table7", "table8", "figure1"} <= set(numbers)
    checked = far = 0
    for name, t in numbers.items():
        if "cells" not in t:
            continue
        for (row, col), cell in t["cells"].items():
            if cell.delta is None:
                continue
            ref = pp.reference(t, row, col)
            assert ref is not None, f"{name}: {row!r} / {col!r} prints a difference but names no reference"
            off = abs(cell.value - t["cells"][ref].value - cell.delta)
            assert off < 0.15, (name, row, col)
            far += off > 0.051
            checked += 1
    assert (checked, far) == (36, 2)


def test_figure1_points_are_the_tables_runs(numbers):
    """Our reading of Figure 1 (paper_numbers.yaml): its points are Tables 2 and 3's cells."""
    left, right = numbers["figure1"]["panels"]["left"], numbers["figure1"]["panels"]["right"]
    t2, t3 = numbers["table2"]["cells"], numbers["table3"]["cells"]
    for series in ("Rand Init", "ImageNet Init"):
        assert left["series"][series] == [t2[(series, c)].value for c in numbers["table2"]["columns"]]
    for series in ("Rand Init", "ImageNet Init", "ImageNet++ Init"):
        assert right["series"][series] == [t3[(series, c)].value for c in numbers["table3"]["columns"]]


def test_claims_take_the_printed_sign_and_the_texts_trends(numbers):
    t2 = {c.name: c for c in pp.claims("table2", numbers["table2"])}
    c = t2["ImageNet Init vs Rand Init (Augment-S4)"]
    assert (c.sign, c.paper, c.terms) == (-1, -1.0, ((("ImageNet Init", "Augment-S4"), 1.0),
                                                    (("Rand Init", "Augment-S4"), -1.0)))
    t7 = {c.name: c for c in pp.claims("table7", numbers["table7"])}
    assert t7["w/ Joint Training vs Sup. Training (ImageNet Init)"].terms[1][0] == ("ImageNet Init", "Sup. Training")
    fig = {c.name: c for c in pp.claims("figure1", numbers["figure1"])}
    trend = fig["pre-training's value falls from Augment-S1 to Augment-S4 (full COCO)"]
    assert trend.sign == 1 and trend.paper == pytest.approx((39.5 - 39.2) - (43.3 - 44.3))


def test_bad_cells_and_tables_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"t\.rows\['A'\]\['x'\].*'\+1 2'"):
        pp.parse_cell("+1 2", "t.rows['A']['x']")
    bad = tmp_path / "numbers.yaml"
    bad.write_text("t:\n  columns: [x, y]\n  rows:\n    A: [1.0]\n")
    with pytest.raises(ValueError, match=r"numbers.yaml: t.rows\['A'\] has 1 cells for 2 columns"):
        pp.load_numbers(bad)
    bad.write_text("t:\n  columns: [x]\n  rows:\n    A: [1.0]\n  deltas:\n    rows: {A: B}\n")
    with pytest.raises(ValueError, match=r"t.deltas.rows: 'A' -> 'B' names no row"):
        pp.load_numbers(bad)


CLAIM = pp.Claim("t", "B vs A", ((("B", "x"), 1.0), (("A", "x"), -1.0)), 1, 1.0, "test")


def test_the_verdict_pairs_runs_by_seed():
    """Teachers that vary a lot between seeds, each student 0.01 above its own teacher: unpaired,
    the two cells' intervals overlap; paired, the gain is certain."""
    a = {0: 0.30, 1: 0.40, 2: 0.50}
    b = {s: v + 0.01 + 0.001 * s for s, v in a.items()}
    v = pp.judge(CLAIM, {("A", "x"): a, ("B", "x"): b})
    diffs = [1.0, 1.1, 1.2]   # points
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / math.sqrt(3)
    assert v["verdict"] == "reproduced" and v["n"] == 3
    assert v["mean"] == pytest.approx(1.1) and v["ci95"] == pytest.approx(half)
    refuted = pp.judge(pp.Claim("t", "A vs B", CLAIM.terms, -1, -1.0, "test"), {("A", "x"): a, ("B", "x"): b})
    assert refuted["verdict"] == "refuted"


def test_inconclusive_unmeasured_and_unpaired_seeds():
    a = {0: 0.30, 1: 0.40, 2: 0.50}
    noisy = {0: 0.32, 1: 0.39, 2: 0.52}    # +2, -1, +2 points: the interval holds 0
    assert pp.judge(CLAIM, {("A", "x"): a, ("B", "x"): noisy})["verdict"] == "inconclusive"
    one = pp.judge(CLAIM, {("A", "x"): a, ("B", "x"): {1: 0.45}})   # only seed 1 has both
    assert (one["verdict"], one["n"], one["mean"]) == ("inconclusive", 1, pytest.approx(5.0))
    missing = pp.judge(CLAIM, {("A", "x"): a})
    assert missing["verdict"] is None and missing["n"] == 0


def test_a_result_spec_expands_to_a_study_whose_students_name_their_own_teacher():
    r = pp.load_result("params/smoke/results/table3.yaml")
    assert r.item == "table3" and len(r.study.cells) == 18 and r.study.seeds == (0, 1)
    student = r.study.cells["ImageNet Init w/ ImageNet Self-training | 50% Dataset"]
    assert "self_train.teacher=@ImageNet Init | 50% Dataset" in student
    assert student[0] == "data.label_fraction=0.5"        # column overrides first, then the row's
    assert r.cells["ImageNet Init w/ ImageNet Self-training | 50% Dataset"] == (
        "ImageNet Init w/ ImageNet Self-training", "50% Dataset")


def test_bad_result_specs_name_the_key(tmp_path):
    spec = tmp_path / "t3.yaml"
    head = "result: table3\nname: t\nbase: params/smoke/retinanet.yaml\ncolumns:\n  20% Dataset: []\n"
    spec.write_text(head + "rows:\n  Rand Init: []\n  Random Init: []\n")
    with pytest.raises(pp.ParamsError, match=r"t3.yaml: rows: 'Random Init' is not a row of the paper's table3"):
        pp.load_result(spec)
    spec.write_text(head + "rows:\n  Rand Init: []\nskip: [[Rand Init, 50% Dataset]]\n")
    with pytest.raises(pp.ParamsError, match=r"skip: \['Rand Init', '50% Dataset'\] is not a \[row, column\]"):
        pp.load_result(spec)
    spec.write_text(head + "rows:\n  Rand Init w/ ImageNet Self-training: [self_train.teacher=@Rand Init]\n"
                    "  Rand Init: []\n")
    with pytest.raises(pp.ParamsError, match=r"must refer to a cell listed before it"):
        pp.load_result(spec)
    spec.write_text(head.replace("table3", "table9") + "rows:\n  Rand Init: []\n")
    with pytest.raises(pp.ParamsError, match=r"result 'table9' is not in paper_numbers.yaml"):
        pp.load_result(spec)


# mini specs read the mini world (generated on a clean clone: about 2 minutes), so -m slow
@pytest.mark.parametrize("spec", [pytest.param(s, marks=pytest.mark.slow) if s.startswith("mini/") else s
                                  for s in sorted(p.relative_to(pp.paths.PARAMS_DIR).as_posix()
                                                  for p in pp.paths.PARAMS_DIR.glob("*/results/*.yaml"))])
def test_every_result_spec_loads_and_judges_claims(spec):
    r = pp.load_result(spec)
    assert r.item == spec.split("/")[-1][:-len(".yaml")] and r.study.name.endswith(r.item)
    assert pp.verdicts(r, {}), spec          # some claim of the paper's item is measured by the spec
