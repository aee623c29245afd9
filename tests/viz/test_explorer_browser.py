"""The pseudo-label explorer as a researcher uses it: JupyterLab on localhost, the notebook opened
in a real headless Chromium (Debian's package, driven by playwright), all cells run, the threshold
slider dragged with the mouse; the gallery and the counts must change. A screenshot of the page
goes to `outputs/browser/` (git-ignored: every run makes a new one).

Skips, saying why, where Chromium or playwright is missing; `.ci/run` installs Chromium.
"""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = os.environ.get("STLIB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = REPO / "outputs" / "browser" / "pseudo_labels_explorer.png"
STATS = re.compile(r"threshold (\d\.\d\d): (\d+) pseudo boxes on (\d+) images")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc, log: Path, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on localhost serving `tmp_path/lab`, with its own config and runtime dirs."""
    root = tmp_path / "lab"
    root.mkdir()
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "jupyter-workspaces"))
    # No "get official Jupyter news?" toast over the page.
    settings = tmp_path / "jupyter-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    log = tmp_path / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
             f"--LabApp.user_settings_dir={tmp_path / 'jupyter-settings'}"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield {"root": root, "base": base, "token": token, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _stats(page) -> tuple:
    text = page.locator(".widget-html pre").first.inner_text()
    m = STATS.search(text)
    assert m, f"the explorer's counts line is not what it should be: {text!r}"
    return float(m.group(1)), int(m.group(2)), int(m.group(3)), text


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium installed (Debian: apt-get install chromium; .ci/run does)")
def test_explorer_slider_in_a_real_browser(tmp_path, jupyterlab):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    import papermill as pm

    from tests.viz.fabricated import fabricated_store

    store_dir = fabricated_store(tmp_path / "store")
    notebook = jupyterlab["root"] / "pseudo_labels.ipynb"
    # Parameters injected as papermill would, without running: the browser runs it.
    pm.execute_notebook(str(REPO / "notebooks" / "pseudo_labels.ipynb"), str(notebook), prepare_only=True,
                        parameters={"STORE_DIR": str(store_dir), "OUT_DIR": str(tmp_path / "explorer"),
                                    "THRESHOLD": 0.5, "NUM_IMAGES": 6, "WORLD_SCALE": "smoke", "WORLD_SEED": 0},
                        progress_bar=False, kernel_name="python3")
    url = f"{jupyterlab['base']}/lab/tree/{notebook.name}?token={jupyterlab['token']}"

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                                   timeout=120_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            handle = page.locator(".widget-slider .noUi-handle").first
            handle.wait_for(state="visible", timeout=300_000)
            page.wait_for_selector(".widget-html pre", timeout=60_000)
            errors = page.locator("[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.first.inner_text()
            t0, boxes0, images0, text0 = _stats(page)
            assert t0 == 0.5 and boxes0 > 0 and images0 == 15
            gallery = page.locator("img.widget-image").first
            gallery.scroll_into_view_if_needed()
            src0, png0 = gallery.get_attribute("src"), gallery.screenshot()

            # Drag the slider's handle to about a fifth of its track (0.05..0.95): a lower threshold.
            handle.scroll_into_view_if_needed()
            track = page.locator(".widget-slider .noUi-target").first.bounding_box()
            knob = handle.bounding_box()
            page.mouse.move(knob["x"] + knob["width"] / 2, knob["y"] + knob["height"] / 2)
            page.mouse.down()
            page.mouse.move(track["x"] + 0.2 * track["width"], knob["y"] + knob["height"] / 2, steps=12)
            page.mouse.up()
            page.wait_for_function(f"() => !document.querySelector('.widget-html pre').innerText.includes({text0[:15]!r})",
                                   timeout=120_000)
            page.wait_for_function(f"() => document.querySelector('img.widget-image').src !== {src0!r}",
                                   timeout=60_000)
            t1, boxes1, images1, _ = _stats(page)
            assert t1 < t0 and boxes1 > boxes0 and images1 == images0, (t0, boxes0, t1, boxes1)
            gallery.scroll_into_view_if_needed()
            assert gallery.screenshot() != png0, "the gallery looks the same after moving the slider"

            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')")
            page.locator(".widget-slider").first.scroll_into_view_if_needed()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))
            (SCREENSHOT.parent / "pseudo_labels_explorer.json").write_text(json.dumps(
                {"before": {"threshold": t0, "pseudo_boxes": boxes0}, "after": {"threshold": t1, "pseudo_boxes": boxes1},
                 "chromium": browser.version}, indent=1) + "\n")
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
