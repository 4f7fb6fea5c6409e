"""Ctrl-C (SIGINT) and SIGTERM through the real entry point, for a single run and for a sweep.

The signal is sent while execute is running (batches of one; sent once the transcript holds a
record), not at a random moment: the run must end `interrupted` with exit 130 (SIGINT) or 143
(SIGTERM), its MLflow run KILLED, and its last line must say how to continue; running that
finishes the work in the same MLflow run (a sweep: under the same parent, the later jobs too).
Runs are forked by tests/fork_runner.py, so each costs its own time and not Python's start-up.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from pipeline.core.transcript import read_transcript
from tests.conftest import mlflow_client
from tests.run.test_kill import ForkRunner

pytestmark = pytest.mark.slow
CODES = {"SIGINT": 130, "SIGTERM": 143}
REASONS = {"SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM"}
LIMIT = 40  # samples per run, one per batch


@pytest.fixture(scope="module")
def runner():
    runner = ForkRunner()
    yield runner
    runner.close()


def run(runner: ForkRunner, cwd: Path, argv: list[str], signal: str | None = None,
        watch: str = "runs/*/*/transcript.jsonl") -> tuple[int, str]:
    """`python -m pipeline ARGV` in cwd, sent `signal` once a transcript matching `watch` has a record:
    (exit code, what it printed)."""
    log = cwd / "attempts.log"
    start = log.stat().st_size if log.exists() else 0
    request = {"cwd": str(cwd), "argv": argv, "log": str(log), "kill_after": None}
    if signal:
        request.update(signal=signal, watch=watch, kill_at_records=1)
    runner.process.stdin.write(json.dumps(request) + "\n")
    runner.process.stdin.flush()
    answer = json.loads(runner.process.stdout.readline())
    return answer["exit"], log.read_text()[start:]


def last_line(output: str) -> str:
    """The command's last line of its own: a warning that joblib's separate resource-tracker process
    prints about the workers it lost (`...warnings.warn(`) may land after it, and is not ours."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    ours = [line for line in lines if "warn" not in line.lower() and "resource_tracker" not in line]
    return ours[-1]


def state(folder: Path) -> str:
    return json.loads((folder / "status.json").read_text())["state"]


@pytest.mark.parametrize("signal", ["SIGINT", "SIGTERM"])
def test_a_signal_during_execute_ends_the_run_interrupted_and_resume_finishes_it_in_the_same_mlflow_run(
        tmp_path, runner, signal):
    code, output = run(runner, tmp_path, ["runtime.batch_size=1", f"dataset.limit={LIMIT}"], signal)
    assert code == CODES[signal], output
    (run_dir,) = [path.parent for path in tmp_path.glob("runs/*/*/transcript.jsonl")]
    hint = last_line(output)
    assert f"continue with: python -m pipeline resume={run_dir})" in hint, hint
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "interrupted" and REASONS[signal] in status["reason"]
    kept = read_transcript(run_dir / "transcript.jsonl")
    assert 1 <= len(kept) < LIMIT
    client = mlflow_client(tmp_path)
    (first,) = client.search_runs(["1"])
    assert first.info.status == "KILLED"

    command = re.search(r"continue with: python -m pipeline (.*)\)$", hint).group(1)
    code, output = run(runner, tmp_path, shlex.split(command))
    assert code == 0, output
    assert state(run_dir) == "success"
    records = read_transcript(run_dir / "transcript.jsonl")
    assert [r["sample_id"] for r in records[:len(kept)]] == [r["sample_id"] for r in kept]
    assert len({r["sample_id"] for r in records}) == len(records) == LIMIT
    (again,) = client.search_runs(["1"])
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"


# SIGTERM in the launching process is covered by the single-run test (the same handler raises the same
# interrupt); the sweep's own paths are Ctrl-C in process and SIGTERM passed on to joblib's workers.
@pytest.mark.parametrize("signal, launcher", [("SIGINT", []),
                                              ("SIGTERM", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])],
                         ids=["SIGINT", "SIGTERM-joblib"])
def test_a_signal_during_a_sweep_ends_its_parent_killed_and_the_hint_resumes_the_whole_sweep(
        tmp_path, runner, signal, launcher):
    """With joblib the jobs run in worker processes and SIGTERM reaches only the launching one (`kill`)."""
    argv = ["-m", *launcher, "generation.seed=1,2,3", "runtime.batch_size=1", f"dataset.limit={LIMIT}"]
    code, output = run(runner, tmp_path, argv, signal, watch="runs/multirun/*/*/1/transcript.jsonl")
    assert code == CODES[signal], output
    (sweep_dir,) = tmp_path.glob("runs/multirun/*/*")
    hint = last_line(output)
    assert f"continue the sweep with: python -m pipeline resume={sweep_dir})" in hint, hint
    states = {job.name: state(job) for job in sweep_dir.iterdir() if (job / "status.json").is_file()}
    assert states["1"] == "interrupted" and "started" not in states.values() and states != {}
    assert "2" not in states or launcher  # in order, one after another: job 2 never began
    client = mlflow_client(tmp_path)
    parent_id = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]
    assert client.get_run(parent_id).info.status == "KILLED"
    statuses = [run.info.status for run in client.search_runs(["1"]) if run.info.run_id != parent_id]
    assert "RUNNING" not in statuses and "KILLED" in statuses
    job_1 = json.loads((sweep_dir / "1" / "tracking.json").read_text())["run_id"]
    if launcher:
        return  # resuming goes the same way whatever the launcher (and joblib's workers take long to start)

    command = re.search(r"continue the sweep with: python -m pipeline (.*)\)$", hint).group(1)
    code, output = run(runner, tmp_path, shlex.split(command))
    assert code == 0, output
    assert [state(sweep_dir / job) for job in "012"] == ["success"] * 3
    assert len(read_transcript(sweep_dir / "2" / "transcript.jsonl")) == LIMIT
    assert client.get_run(parent_id).info.status == "FINISHED"
    runs = client.search_runs(["1"])
    assert len(runs) == 4  # the parent and its three jobs, none twice
    children = [run for run in runs if run.info.run_id != parent_id]
    assert all(run.data.tags["mlflow.parentRunId"] == parent_id and run.info.status == "FINISHED" for run in children)
    assert job_1 in {run.info.run_id for run in children}  # job 1 went on in its own MLflow run
