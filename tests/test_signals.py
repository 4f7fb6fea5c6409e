"""Ctrl-C (SIGINT) and SIGTERM through the real entry point, for a single run and for a sweep.

The signal is sent while execute is running (batches of one; sent once the transcript has a
record), not at a random moment: the run must end `interrupted` with exit 130 (SIGINT) or 143
(SIGTERM), its MLflow run KILLED, and the one line it prints must say how to continue; running
that finishes the work in the same MLflow run (a sweep: the same parent, the later jobs too).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import mlflow_client, pipeline_env, run_pipeline
from pipeline.transcript import read_transcript

pytestmark = pytest.mark.slow
CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
LIMIT = 40  # samples per run: batches of one keep execute going for seconds on the demo model


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m pipeline ARGS` in its own session, SIGINT handled as in a terminal (not ignored)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=pipeline_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def signal_when_written(process: subprocess.Popen, transcripts: str, cwd: Path, signum: int) -> tuple[str, str]:
    """Send `signum` once a transcript matching the glob holds a record (execute is running); wait for the end."""
    deadline = time.monotonic() + 240
    while not any(path.read_text().count("\n") >= 1 for path in cwd.glob(transcripts)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "execute never started"
        time.sleep(0.02)
    process.send_signal(signum)
    return process.communicate(timeout=240)


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def state(folder: Path) -> str:
    return json.loads((folder / "status.json").read_text())["state"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_execute_ends_the_run_interrupted_and_resume_finishes_it_in_the_same_mlflow_run(
        tmp_path, signum):
    process = start(["runtime.batch_size=1", f"dataset.limit={LIMIT}"], tmp_path)
    _, stderr = signal_when_written(process, "runs/*/*/transcript.jsonl", tmp_path, signum)
    assert process.returncode == CODES[signum], stderr
    assert "Traceback" not in stderr
    (run_dir,) = [path.parent for path in tmp_path.glob("runs/*/*/transcript.jsonl")]
    hint = last_line(stderr)
    assert f"continue with: python -m pipeline resume={run_dir}" in hint, hint
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted"
    assert ("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C") in status["reason"]
    kept = read_transcript(run_dir / "transcript.jsonl")
    assert 1 <= len(kept) < LIMIT
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs(["1"])
    assert run.info.status == "KILLED"

    resumed = run_pipeline(shlex.split(hint.split("continue with: python -m pipeline ", 1)[1].rstrip(")")),
                           cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert state(run_dir) == "success"
    records = read_transcript(run_dir / "transcript.jsonl")
    assert [r["sample_id"] for r in records[:len(kept)]] == [r["sample_id"] for r in kept]
    assert len({r["sample_id"] for r in records}) == len(records) == LIMIT
    (again,) = client.search_runs(["1"])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_sweep_ends_its_parent_killed_and_the_hint_resumes_the_whole_sweep(tmp_path, signum):
    process = start(["-m", "generation.seed=1,2,3", "runtime.batch_size=1", f"dataset.limit={LIMIT}"], tmp_path)
    _, stderr = signal_when_written(process, "runs/multirun/*/*/1/transcript.jsonl", tmp_path, signum)
    assert process.returncode == CODES[signum], stderr
    assert "Traceback" not in stderr
    (sweep_dir,) = tmp_path.glob("runs/multirun/*/*")
    hint = last_line(stderr)
    assert f"continue the sweep with: python -m pipeline resume={sweep_dir}" in hint, hint
    assert state(sweep_dir / "0") == "success" and state(sweep_dir / "1") == "interrupted"
    assert not (sweep_dir / "2").exists()
    client = mlflow_client(tmp_path)
    parent_id = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]
    assert client.get_run(parent_id).info.status == "KILLED"
    job_runs = {json.loads((sweep_dir / job / "tracking.json").read_text())["run_id"]: job for job in "01"}
    assert {job: client.get_run(run_id).info.status for run_id, job in job_runs.items()} == \
        {"0": "FINISHED", "1": "KILLED"}

    command = re.search(r"continue the sweep with: python -m pipeline (.*)\)$", hint).group(1)
    resumed = run_pipeline(shlex.split(command), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [state(sweep_dir / job) for job in "012"] == ["success"] * 3
    assert len(read_transcript(sweep_dir / "2" / "transcript.jsonl")) == LIMIT
    assert client.get_run(parent_id).info.status == "FINISHED"
    runs = client.search_runs(["1"])
    assert len(runs) == 4  # the parent and its three jobs, none twice
    children = {run.info.run_id: run for run in runs if run.info.run_id != parent_id}
    assert all(run.data.tags["mlflow.parentRunId"] == parent_id for run in children.values())
    assert all(run.info.status == "FINISHED" for run in children.values())
    assert set(job_runs) <= set(children)  # job 1 went on in its own run
