"""`stlib reproduce`: the paper's results from runs, through their notebooks, at smoke scale."""
import json
from pathlib import Path

import pytest

from stlib import cli
from stlib.experiments import paper as pp


def test_reproduce_plans_each_shared_run_once(tmp_path, capsys):
    assert cli.main(["reproduce", "table3", "table7", "--scale", "smoke", "--seeds", "1", "--plan",
                     "--outputs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table3 = pp.load_result("params/smoke/results/table3.yaml", seeds=1)
    table7 = pp.load_result("params/smoke/results/table7.yaml", seeds=1)
    ids = {r["run_id"] for res in (table3, table7) for r in pp.plan_results([res], tmp_path)["rows"]}
    # Table 7's supervised and self-training cells at 20% are Table 3's: only its joint cells are new
    assert len(ids) == 18 + 4
    assert out.count("| to make |") == 22 and "table7: Rand Init | w/ Joint Training | 0 |" in out
    assert "table7: Rand Init | Sup. Training" not in out      # listed once, under table3


def test_reproduce_names_a_missing_spec(capsys):
    assert cli.main(["reproduce", "table2", "--scale", "mini", "--plan"]) == 2
    err = capsys.readouterr().err
    assert "no result spec params/mini/results/table2.yaml for table2 at the mini scale" in err


@pytest.mark.slow   # 71 s warm, more on a fresh clone: the suite's 20-minute budget (all eight: below)
def test_reproduce_renders_table5_beside_the_paper(tmp_path, capsys, monkeypatch):
    """Table 5 at smoke scale, one seed, end to end through notebooks/table5.ipynb: the SpineNet
    teacher, its pseudo labels on the scene pool, the student, then the table and its verdict,
    published as records with its runs."""
    monkeypatch.setenv("STLIB_RECORDS", str(tmp_path / "records"))
    assert cli.main(["reproduce", "table5", "--scale", "smoke", "--seeds", "1", "--direct", "--quiet",
                     "--outputs", str(tmp_path)]) == 0
    out_dir = tmp_path / "paper" / "smoke"
    md = (out_dir / "table5.md").read_text()
    assert md in capsys.readouterr().out
    assert "| SpineNet-190 (1280) [ours: spinenet-tiny, 64 px] |" in md and "| (+1.6) 54.2 |" in md
    data = json.loads((out_dir / "table5.json").read_text())
    assert data["seeds"] == [0] and [c["ours"]["n"] for c in data["layout"]] == [1, 1]
    student = data["layout"][1]
    assert student["ours_delta"]["mean"] == pytest.approx(student["ours"]["mean"] - data["layout"][0]["ours"]["mean"])
    assert [v["verdict"] for v in data["verdicts"]] == ["inconclusive"]     # one seed gives no interval
    assert (out_dir / "table5.tex").is_file() and (out_dir / "table5.csv").is_file()
    assert (out_dir / "notebooks" / "table5.ipynb").is_file()
    assert cli.main(["publish", str(out_dir)]) == 0 and cli.main(["publish", str(tmp_path / "studies" / "smoke-table5")]) == 0
    recs = tmp_path / "records"
    assert (recs / "paper" / "smoke" / "table5.md").read_text() == md
    made = json.loads((tmp_path / "studies" / "smoke-table5" / "results.json").read_text())["runs"]
    assert len(made) == 2 and sorted(p.name for p in (recs / "runs").iterdir()) == sorted(
        Path(r["run_dir"]).name for r in made)


@pytest.mark.slow
def test_every_result_notebook_runs_at_smoke_scale(tmp_path):
    """Figure 1 and Tables 2, 3, 4, 5 and 7 end to end, one seed, sharing their runs (a few minutes)."""
    assert cli.main(["reproduce", "--scale", "smoke", "--seeds", "1", "--direct", "--quiet",
                     "--outputs", str(tmp_path)]) == 0
    out_dir = tmp_path / "paper" / "smoke"
    for item in pp.ITEMS:
        data = json.loads((out_dir / f"{item}.json").read_text())
        assert all(c["ours"]["n"] == 1 for c in data["layout"]), item
    assert (out_dir / "figure1.png").is_file() and (out_dir / "figure1.pdf").is_file()


def test_the_paper_scale_plan_needs_no_data(tmp_path, capsys, monkeypatch):
    """Every run of every paper-scale item, each once, without COCO or ImageNet on disk: a student
    whose teacher does not exist has a provisional id that does not read its unlabeled source."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))
    assert cli.main(["reproduce", "--scale", "paper", "--plan", "--outputs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # Figure 1: 3 inits x 6 settings (its S4 point is its 100% one); Table 2: + 4 students;
    # Table 3: + 8 students (its inits' runs are Figure 1's, its 100% Rand Init student Table 2's S4
    # one); Table 4: 4 ResNet-50 runs; Table 5: 4 SpineNet runs; Table 7: + 4 joint runs (its other
    # cells are Table 3's 20% ones); Tables 6 and 8: 4 and 6 segmentation runs (VOC not on disk)
    assert out.count("| to make |") == 18 + 4 + 8 + 4 + 4 + 4 + 4 + 6
    assert "table7: Rand Init | w/ Joint Training | 0 |" in out and "| 120000 |" in out
    assert "table5: SpineNet-190 (1280) w/ Self-training | AP (val) | 0 |" in out and "| 185200 |" in out
