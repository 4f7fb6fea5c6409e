"""A local MLflow store (SQLite) that cannot work, as a user meets it through `python -m pipeline`.

- One its path already shows (not a SQLite database, a folder, under a file, a read-only file or
  folder) is refused by the command-line check: exit 2, one line naming tracking.uri and what to
  do, nothing created. With tracking.required=false the run goes on without MLflow instead.
- One that goes read-only while the run executes fails the run (exit 1) with one line in our
  words, none of MLflow's or SQLAlchemy's log on the terminal, the records kept; a resume once
  the store is writable again finishes the same MLflow run.
- A lock held by another connection (a real exclusive SQLite lock) is waited out and the write
  retried; a lock that stays fails with one line instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.core.transcript import read_transcript
from tests.conftest import pipeline_env, run_pipeline

STORE = "sqlite:///store/mlflow.db"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def read_only(*paths: Path):
    """Make paths read-only for this process's children: chmod for a user, the immutable flag for root
    (root writes through any mode bits); skipped where neither can be had."""
    if os.geteuid() != 0:
        modes = [p.stat().st_mode for p in paths]
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, mode in zip(paths, modes):
                p.chmod(mode)
        return
    done = []
    try:
        for p in paths:
            if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0:
                pytest.skip("running as root, and chattr +i is refused here: no way to make a file read-only")
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=True)


def new_store(cwd: Path) -> Path:
    (cwd / "store").mkdir()
    path = cwd / "store" / "mlflow.db"
    sqlite3.connect(path).execute("CREATE TABLE kept (a)").connection.close()  # a SQLite file, not MLflow's yet
    return path


def assert_one_line(stderr: str, starts: str, *words: str) -> str:
    assert "Traceback" not in stderr and "sqlalchemy" not in stderr.lower() and "autoflush" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(starts), last
    for word in words:
        assert word in last, (word, last)
    return last


@pytest.mark.parametrize("case", ["not a database", "a folder", "under a file", "read-only file", "read-only folder"])
def test_a_store_that_cannot_be_written_is_refused_before_anything_is_created(tmp_path, case):
    path = tmp_path / "store" / "mlflow.db"
    expected = {"not a database": "is not a SQLite database", "a folder": "is a folder, not a SQLite file",
                "under a file": "is a file, not a folder", "read-only file": "is read-only: make it writable",
                "read-only folder": "is read-only (SQLite writes its journal there)"}[case]
    if case == "not a database":
        path.parent.mkdir()
        path.write_text("my notes\n")
    elif case == "a folder":
        path.mkdir(parents=True)
    elif case == "under a file":
        path.parent.write_text("a file where the store's folder should be\n")
    else:
        new_store(tmp_path)
    locked = {"read-only file": [path], "read-only folder": [path.parent]}.get(case, [])
    before = snapshot(tmp_path)
    with read_only(*locked):
        result = run_pipeline([f"tracking.uri={STORE}", "dataset.limit=2"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_one_line(result.stderr, f"config error: tracking.uri='{STORE}': ", expected, str(path))
    assert snapshot(tmp_path) == before, "a refused run creates and changes nothing (no runs/, no store)"


@pytest.mark.slow
def test_with_tracking_required_false_a_bad_store_is_left_behind_and_the_run_goes_on(tmp_path):
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    path.write_text("my notes\n")
    result = run_pipeline([f"tracking.uri={STORE}", "tracking.required=false", "dataset.limit=2",
                           "hydra.run.dir=runs/offline"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "sqlalchemy" not in result.stderr.lower()
    (warning,) = [line for line in result.stderr.splitlines() if "MLflow" in line]
    assert "is not a SQLite database" in warning and "going on without MLflow (tracking.required=false)" in warning
    run_dir = tmp_path / "runs" / "offline"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "success"
    assert json.loads((run_dir / "tracking.json").read_text())["state"] == "offline"
    assert f"upload with: python -m pipeline.sync {run_dir}" in result.stdout
    assert path.read_text() == "my notes\n"


@pytest.mark.slow
def test_a_store_that_goes_read_only_mid_run_fails_it_in_one_line_and_a_resume_finishes_it(tmp_path):
    path = new_store(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "pipeline", f"tracking.uri={STORE}", "dataset.limit=20",
                                "runtime.batch_size=1", "hydra.run.dir=runs/r"], cwd=tmp_path, env=pipeline_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    transcript = tmp_path / "runs" / "r" / "transcript.jsonl"
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:  # the MLflow run is open; execute runs
            if transcript.is_file() and transcript.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        with read_only(path, path.parent):
            written = transcript.read_bytes().count(b"\n")
            _, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert written < 20, "the store went read-only while execute ran"
    assert process.returncode == 1, stderr
    assert_one_line(stderr, f"run failed: MLflow tracking at sqlite:///{path} failed: the SQLite file {path} is "
                    "read-only. Make it writable", "tracking.required=false")
    run_dir = transcript.parent
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    assert len(read_transcript(transcript)) == 20  # the records are kept

    resumed = run_pipeline(["resume=runs/r"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    (run,) = [r for r in runs if r.data.tags.get("run_dir") == str(run_dir)]
    assert run.info.status == "FINISHED" and run.data.metrics["samples"] == 20


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    """A GuardedTracker with an open run in a fresh store; MLflow's own wait on a lock (20 s per
    session, a PRAGMA it sends) cut to 0.2 s, so what is tested is our retry, in seconds."""
    from sqlalchemy import event

    from pipeline.core.config import TrackingConfig
    from pipeline.tracking.guard import GuardedTracker

    guarded = GuardedTracker(TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db"), tmp_path)
    guarded.start("locked", {})
    engine = guarded.client._tracking_client.store.engine

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def shorter_busy_wait(conn, cursor, statement, parameters, context, executemany):
        return statement.replace("busy_timeout = 20000", "busy_timeout = 200"), parameters

    return guarded


@contextlib.contextmanager
def exclusive_lock(database: Path):
    """Another process's exclusive lock on the SQLite file: no one else reads or writes until it goes."""
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield holder
    finally:
        holder.close()


def test_a_lock_held_by_another_connection_is_waited_out_and_the_write_retried(tracker, tmp_path, monkeypatch):
    import pipeline.tracking.guard as guard

    pauses, pause = [], time.sleep
    monkeypatch.setattr(guard.time, "sleep", lambda seconds: (pauses.append(seconds), pause(seconds)))
    with exclusive_lock(tmp_path / "mlflow.db") as holder:
        threading.Timer(1.5, holder.rollback).start()  # the other process finishes in 1.5 s
        tracker.log_metrics({"after_the_lock": 1.0})
    assert pauses, "the write met the lock and was tried again"
    assert tracker.offline_reason is None
    assert tracker.client.get_run(tracker.run_id).data.metrics["after_the_lock"] == 1.0


def test_a_lock_that_stays_fails_with_one_line(tracker, tmp_path, monkeypatch, capfd):
    import pipeline.tracking.guard as guard
    from pipeline.core.errors import TrackingError

    monkeypatch.setattr(guard, "LOCK_WAIT_S", 1.0)  # 60 s in use
    started = time.monotonic()
    with exclusive_lock(tmp_path / "mlflow.db"), pytest.raises(TrackingError) as raised:
        tracker.log_metrics({"never": 1.0})
    assert time.monotonic() - started < 20
    message = str(raised.value)
    assert "\n" not in message and "autoflush" not in message
    assert f"the SQLite file {tmp_path / 'mlflow.db'} stayed locked by another process for" in message
    assert "tracking.required=false" in message
    assert json.loads((tmp_path / "tracking.json").read_text())["state"] == "offline"
    assert "Traceback" not in capfd.readouterr().err  # MLflow's own log of the failure stays off the terminal


def test_the_runner_refuses_a_bad_store_before_it_resolves_the_model(tmp_path):
    """What the command-line check cannot see (a library caller, a sweep's later job) meets the
    same check at the start of the run: a UserError naming tracking.uri (exit 2 from the command line)."""
    from pipeline.core.config import TrackingConfig
    from pipeline.core.errors import UserError
    from pipeline.run.runner import run
    from tests.conftest import DEMO_DATASET, make_config

    store = tmp_path / "notes.db"
    store.write_text("my notes\n")
    config = make_config(tmp_path / "no-model-here", DEMO_DATASET, tracking=TrackingConfig(uri=f"sqlite:///{store}"))
    with pytest.raises(UserError, match=f"tracking.uri='sqlite:///{store}': {store} is not a SQLite database"):
        run(config, tmp_path / "run")  # the model would be refused too: the store is checked first
    assert store.read_text() == "my notes\n" and not (tmp_path / "mlartifacts").exists()


def test_a_dataset_insert_lost_to_a_parallel_job_is_tried_again(tracker, monkeypatch):
    """Two joblib jobs logging the same dataset at once: MLflow looks it up, then inserts it, so one of
    them hits the unique constraint; its retry finds the other's row (seen failing a job on CI)."""
    from mlflow.exceptions import MlflowException

    from pipeline.core.config import DatasetConfig
    from tests.conftest import DEMO_DATASET

    real, calls = tracker.client.log_inputs, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(*args, **kwargs)

    monkeypatch.setattr(tracker.client, "log_inputs", racing)
    tracker.log_dataset(DatasetConfig(path=str(DEMO_DATASET)), 5)
    assert len(calls) == 2 and tracker.offline_reason is None
    assert [d.dataset.name for d in tracker.client.get_run(tracker.run_id).inputs.dataset_inputs] == ["addition"]
