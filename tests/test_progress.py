"""Progress of nested runs: reports written by a run, read and printed by the watching command."""
import io
import json
import os
import subprocess
import sys
import textwrap

from stlib import progress


def test_a_report_from_another_process_is_printed_with_step_rate_eta_and_metric(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV_DIR, str(tmp_path))
    code = textwrap.dedent("""
        import time
        from stlib.progress import Reporter
        r = Reporter("mini-retinanet-abc", 100, interval=0.0)
        r.t0 -= 10.0                        # as if 10 s ago
        r.update(40)
        r.update(40, force=True, metric="AP", value=0.0712, eval_step=40)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
    (report,) = progress.read_reports(tmp_path)
    assert report["done"] == 40 and report["total"] == 100 and report["value"] == 0.0712
    out = io.StringIO()
    w = progress.Watcher(tmp_path, every=60, stream=out)
    lines = w.poll()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("[progress] mini-retinanet-abc: step 40/100 (40%)")
    assert "step/s" in line and "ETA " in line and "val AP 0.0712 @40" in line
    assert w.poll() == []                      # nothing moved: nothing printed again
    assert out.getvalue().count("\n") == 1


def test_own_reports_are_not_printed_and_no_folder_means_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv(progress.ENV_DIR, str(tmp_path))
    r = progress.Reporter("here", 10, interval=0.0)
    r.update(5)
    assert len(progress.read_reports(tmp_path)) == 1
    assert progress.Watcher(tmp_path, every=60, stream=io.StringIO()).poll() == []
    monkeypatch.delenv(progress.ENV_DIR)
    quiet = progress.Reporter("nowhere", 10)
    quiet.update(10)
    assert quiet.path is None


def test_watch_sets_the_folder_for_children_and_removes_it(monkeypatch):
    monkeypatch.delenv(progress.ENV_DIR, raising=False)
    with progress.watch(every=60, stream=io.StringIO()) as w:
        folder = os.environ[progress.ENV_DIR]
        assert w is not None and os.path.isdir(folder)
        with progress.watch() as inner:          # a watched command inside another prints nothing itself
            assert inner is None and os.environ[progress.ENV_DIR] == folder
    assert progress.ENV_DIR not in os.environ and not os.path.exists(folder)


def test_format_of_a_finished_run():
    line = progress.format_report({"name": "x", "done": 6, "total": 6, "unit": "step", "rate": 2.0, "eta_s": 0.0})
    assert line == "[progress] x: step 6/6 (100%), 2.00 step/s, done"
    assert json.dumps(progress.format_report({"name": "p", "done": 1, "total": 4, "unit": "img", "rate": None,
                                              "eta_s": None})) == '"[progress] p: img 1/4 (25%)"'
