"""The MLflow UI shows what a real sweep logged: the experiment, the sweep's parent and its jobs,
a metric, the jobs among MLflow's evaluation runs (their scores the first columns, figures rounded),
and the traces of a job with their assessments.

Fills a store with a small sweep (demo model), serves it with `mlflow ui` (what `make ui` runs) on
a free loopback port and opens it in headless Chromium: Debian's /usr/bin/chromium driven by
Playwright, never a downloaded browser. Skipped where either is missing; `.ci/run` and `make
test-ui` install both, so CI runs it with the rest of `make test`. Screenshots are kept in the test's tmp
folder (pytest keeps the last three runs' folders: /tmp/pytest-of-<user>/pytest-current/), never
in the repository.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.tracking.guard import create_sqlite_store
from pipeline.tracking.runs import ESTIMATED, TIMED
from tests.conftest import mlflow_client, pipeline_env, run_pipeline

pytestmark = [pytest.mark.ui, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # headless and a fresh profile come from Playwright
REQUIRED = "PIPELINE_BROWSER_TEST"  # when set, a missing browser fails the test instead of skipping it
WAIT_MS = 90_000  # the first page load compiles the UI's bundle on a busy machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(base URL, store folder): the UI serving a store with one two-job sweep in it."""
    missing = not CHROMIUM.is_file() and f"no Chromium at {CHROMIUM} (make browser installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = missing or "Playwright is not installed (make browser installs it)"
    if missing and os.environ.get(REQUIRED):
        pytest.fail(f"{missing}; {REQUIRED} is set: the browser test must run")
    if missing:
        pytest.skip(missing)
    cwd = tmp_path_factory.mktemp("ui")
    store = cwd / "runs" / "mlflow.db"
    create_sqlite_store(f"sqlite:///{store}")  # whole, before two processes open it at once
    port = free_port()
    log = (cwd / "mlflow-ui.log").open("w")
    # the server starts (about a minute on a busy machine) while the sweep runs
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store}",
                               "--host", "127.0.0.1", "--port", str(port)],
                              cwd=cwd, env=pipeline_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        result = run_pipeline(["-m", "generation.temperature=0,1.5", "dataset.limit=3"], cwd=cwd)
        assert result.returncode == 0, result.stderr
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


def test_the_ui_shows_the_sweep_its_jobs_a_metric_evaluation_runs_and_assessed_traces(ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, store = ui
    client = mlflow_client(store)
    experiment = client.get_experiment_by_name("pipeline")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("run_type") == "sweep"]
    child = next(r for r in runs if r.info.run_name.startswith("1 · "))
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
        # the metric's row: its name first (a param's row can hold the word too: pipeline.objective accuracy)
        row = page.get_by_role("row", name=re.compile(r"^accuracy\s"))
        expect(row).to_contain_text(str(int(accuracy)) if accuracy.is_integer() else repr(accuracy))
        shots.append(tmp_path / "run.png")
        page.screenshot(path=shots[-1])

        page.goto(f"{base}#/experiments/{experiment.experiment_id}/evaluation-runs")  # MLflow's evaluation runs
        expect(page.get_by_role("heading", name="Evaluation runs")).to_be_visible()
        for job in (r for r in runs if r is not parent):  # each job's row (its name cell may be cut short)
            row = page.get_by_role("row", name=re.compile(re.escape(job.info.run_name)))
            expect(row).to_contain_text(job.inputs.dataset_inputs[0].dataset.name)  # its dataset, the run's input
        # the scores are the first metric columns a user sees; the stage timings come after every summary figure
        headers = [header.inner_text().strip() for header in page.get_by_role("columnheader").all()]
        metrics = headers[headers.index("Dataset") + 1:]
        assert metrics[:3] == ["accuracy", "accuracy_ci_low", "accuracy_ci_high"], headers
        assert metrics.index("stage/resolve/seconds") > metrics.index("peak_memory_bytes"), headers
        # figures rounded: timings and speeds to the thousandth, interval bounds and averages to four decimals
        values = dict(zip(metrics, row.inner_text().splitlines()[-len(metrics):]))
        rounded = {key: value for key, value in values.items() if key.endswith(TIMED + ESTIMATED)}
        assert "stage/load/seconds" in rounded and "accuracy_ci_low" in rounded, values
        assert not [value for value in rounded.values() if re.search(r"\.\d{5,}", value)], values
        shots.append(tmp_path / "evaluation-runs.png")
        page.screenshot(path=shots[-1])

        page.goto(f"{base}#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}/traces")
        (trace, *_) = client.search_traces(locations=[experiment.experiment_id], run_id=child.info.run_id)
        expect(page.get_by_text(trace.info.trace_id)).to_be_visible()
        expect(page.get_by_text(trace.info.request_preview, exact=True).first).to_be_visible()

        feedback = next(a for a in trace.info.assessments if a.feedback is not None)
        expectation = next(a for a in trace.info.assessments if a.expectation is not None)
        # the run's traces table has a column per assessment: the scorer's and the expected output
        expect(page.get_by_role("columnheader", name=re.compile(re.escape(feedback.name))).first).to_be_visible()
        expect(page.get_by_role("columnheader", name=re.compile("Expected output")).first).to_be_visible()
        shots.append(tmp_path / "traces.png")
        page.screenshot(path=shots[-1])

        page.get_by_text(trace.info.trace_id).click()  # the trace's own view: its span, inputs and outputs
        sample_id = trace.data.spans[0].name
        expect(page.get_by_text(sample_id, exact=True).first).to_be_visible()
        page.get_by_role("button", name=re.compile(r"^Assess")).click()  # its assessments
        expect(page.get_by_text("Feedback (1)")).to_be_visible()
        expect(page.get_by_text(feedback.name, exact=True).last).to_be_visible()
        expect(page.get_by_text(expectation.name, exact=True)).to_be_visible()
        expect(page.get_by_text(str(expectation.value), exact=True).last).to_be_visible()
        shots.append(tmp_path / "trace.png")
        page.screenshot(path=shots[-1])
        browser.close()

    for shot in shots:
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
