"""The MLflow UI shows what a real sweep logged: the experiment, the sweep's parent and its jobs,
a metric, and the traces of a job.

Fills a store with a small sweep (demo model), serves it with `mlflow ui` (what `make ui` runs) on
a free loopback port and opens it in headless Chromium: Debian's /usr/bin/chromium driven by
Playwright, never a downloaded browser. Skipped where either is missing (CI has no Chromium);
`make test-ui` installs both and runs this test alone. Screenshots are kept in the test's tmp
folder (pytest keeps the last three runs' folders: /tmp/pytest-of-<user>/pytest-current/), never
in the repository.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import mlflow_client, pipeline_env, run_pipeline

pytestmark = [pytest.mark.ui, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # headless and a fresh profile come from Playwright
WAIT_MS = 90_000  # the first page load compiles the UI's bundle on a busy machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(base URL, store folder): the UI serving a store with one two-job sweep in it."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test-ui installs it)")
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (make test-ui installs it)")
    cwd = tmp_path_factory.mktemp("ui")
    result = run_pipeline(["-m", "generation.temperature=0,1.5", "dataset.limit=3"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    port = free_port()
    log = (cwd / "mlflow-ui.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                               f"sqlite:///{cwd / 'runs' / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=cwd, env=pipeline_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow ui did not come up: {(cwd / 'mlflow-ui.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield base, cwd
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, nothing else
        server.wait(timeout=30)
        log.close()


def test_the_ui_shows_the_sweep_its_jobs_a_metric_and_traces(ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, store = ui
    client = mlflow_client(store)
    experiment = client.get_experiment_by_name("pipeline")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("run_type") == "sweep"]
    child = next(r for r in runs if r.info.run_name.startswith("1: "))
    shots = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1600, "height": 1000})
        page = browser.new_page()
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)

        page.goto(f"{base}#/experiments/{experiment.experiment_id}/runs")
        expect(page.get_by_text("pipeline").first).to_be_visible()
        expect(page.get_by_text(parent.info.run_name, exact=True)).to_be_visible()
        # the parent's expander unfolds its jobs
        page.locator("[role=row]", has_text=parent.info.run_name).locator("button").first.click()
        for job in (r for r in runs if r is not parent):
            expect(page.get_by_text(job.info.run_name, exact=True)).to_be_visible()
        shots.append(tmp_path / "runs.png")
        page.screenshot(path=shots[-1])

        page.goto(f"{base}#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}")
        expect(page.get_by_role("link", name=parent.info.run_name)).to_be_visible()  # its parent run
        accuracy = child.data.metrics["accuracy"]
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="accuracy", exact=True))
        expect(row).to_contain_text(str(int(accuracy)) if accuracy.is_integer() else repr(accuracy))
        shots.append(tmp_path / "run.png")
        page.screenshot(path=shots[-1])

        page.goto(f"{base}#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}/traces")
        (trace, *_) = client.search_traces(locations=[experiment.experiment_id], run_id=child.info.run_id)
        expect(page.get_by_text(trace.info.trace_id)).to_be_visible()
        expect(page.get_by_text(trace.info.request_preview, exact=True).first).to_be_visible()
        shots.append(tmp_path / "traces.png")
        page.screenshot(path=shots[-1])

        page.get_by_text(trace.info.trace_id).click()  # the trace's own view: its span, inputs and outputs
        sample_id = trace.data.spans[0].name
        expect(page.get_by_text(sample_id, exact=True).first).to_be_visible()
        shots.append(tmp_path / "trace.png")
        page.screenshot(path=shots[-1])
        browser.close()

    for shot in shots:
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
