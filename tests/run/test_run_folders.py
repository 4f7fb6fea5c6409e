"""Where a run or a sweep may write, and a sweep whose launcher cannot start, through `python -m pipeline`.

A run folder must be new or empty, or (to resume) one of ours: the launch folder (an empty
hydra.run.dir, as from an unset $VAR), a folder above it, and a folder holding anything else
are refused with one line and exit 2 before anything is written. Only the files a run writes
go to MLflow. A launcher setting that cannot work leaves no sweep folder and no RUNNING parent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import mlflow_client, run_pipeline

CHEAP = ["tracking=none", "dataset.limit=2"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def project(tmp_path: Path) -> Path:
    """A launch folder like a user's project: sources, an earlier run's store, a model folder."""
    (tmp_path / "src").mkdir(parents=True)
    (tmp_path / "src" / "code.py").write_text("print('mine')\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlflow.db").write_bytes(b"not touched")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}\n')
    return tmp_path


def assert_refused(result, pattern: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("args, pattern", [
    (["hydra.run.dir="], "config error: hydra.run.dir='': the run folder would be the folder you launched from"),
    (["hydra.run.dir=."], "hydra.run.dir=.: the run folder would be the folder you launched from"),
    (["hydra.run.dir=src/.."], "hydra.run.dir=src/..: the run folder would be the folder you launched from"),
    (["hydra.run.dir=.."], "hydra.run.dir=..: the run folder would be a folder above the one you launched from"),
    (["hydra.run.dir=model"], "hydra.run.dir=model: that folder holds other files (config.json) and not a run"),
    (["hydra.run.dir=src"], "hydra.run.dir=src: that folder holds other files (code.py)"),
    (["-m", "generation.seed=1,2", "hydra.sweep.dir="], "hydra.sweep.dir='': the sweep folder would be the folder"),
    (["-m", "generation.seed=1,2", "hydra.sweep.dir=model"], "hydra.sweep.dir=model: that folder holds other files"),
    (["-m", "generation.seed=1,2", "hydra.sweep.subdir="],
     "hydra.sweep.subdir='': each job's folder would be the sweep folder itself"),
], ids=["empty", "dot", "cwd-by-another-name", "parent", "model-folder", "sources", "sweep-empty", "sweep-model",
        "sweep-subdir-empty"])
def test_a_folder_that_is_not_the_runs_own_is_refused_before_anything_is_written(tmp_path, args, pattern):
    cwd = project(tmp_path / "project")
    before, above = snapshot(cwd), sorted(p.name for p in tmp_path.iterdir())
    result = run_pipeline(args + CHEAP, cwd=cwd)
    assert_refused(result, pattern)
    assert snapshot(cwd) == before  # nothing written, overwritten or added (no .hydra/, config.json, runs/...)
    assert sorted(p.name for p in tmp_path.iterdir()) == above


def test_an_empty_folder_or_a_new_one_takes_the_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "new/run"):
        result = run_pipeline([f"hydra.run.dir={folder}", "pipeline.until=plan", *CHEAP], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / folder / "plan.json").is_file()


def test_only_the_files_a_run_writes_are_uploaded(tmp_path):
    """Defence in depth: whatever else is in a run's folder (here, put there by hand) stays out of MLflow."""
    from pipeline.core.config import TrackingConfig
    from pipeline.run.runner import close_run
    from pipeline.run.status import set_status
    from pipeline.tracking.guard import GuardedTracker

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    for name in ("config.json", "plan.json", "summary.json"):
        (run_dir / name).write_text("{}\n")
    (run_dir / "transcript.jsonl").write_text("")
    (run_dir / "run.log").write_text("log\n")
    (run_dir / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    set_status(run_dir, "started")
    (run_dir / "notes.txt").write_text("private\n")  # not the run's
    (run_dir / "data").mkdir()
    (run_dir / "data" / "big.bin").write_bytes(b"\0" * 10)
    (run_dir / ".hydra" / "other.yaml").write_text("x: 1\n")
    (tmp_path / "runs").mkdir()
    tracker = GuardedTracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"), run_dir)
    tracker.start(run_name="run", tags={})
    close_run(run_dir, tracker, "success", "FINISHED", "")
    client = mlflow_client(tmp_path)
    top = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert top == {"config.json", "plan.json", "summary.json", "transcript.jsonl", "run.log", "status.json",
                   "tracking.json", ".hydra"}
    assert {a.path for a in client.list_artifacts(tracker.run_id, ".hydra")} == {".hydra/hydra.yaml"}


def test_a_launcher_setting_that_cannot_work_leaves_no_sweep_folder_and_no_running_parent(tmp_path):
    result = run_pipeline(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "generation.seed=1,2",
                           "dataset.limit=1"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("config error: the sweep could not start: n_jobs == 0") and "hydra.launcher" in last, last
    assert not (tmp_path / "runs" / "multirun").exists()
    runs = mlflow_client(tmp_path).search_runs(["1"]) if (tmp_path / "runs" / "mlflow.db").exists() else []
    assert all(run.info.status == "FAILED" for run in runs), [run.info.status for run in runs]
    assert os.listdir(tmp_path / "runs") in ([], ["mlflow.db"])


def test_a_hydra_setting_that_fails_before_the_run_starts_is_one_line_and_leaves_nothing(tmp_path):
    result = run_pipeline(["hydra.job_logging.handlers.file.class=nowhere.Handler", *CHEAP], cwd=tmp_path)
    assert_refused(result, "config error: the run could not start: Unable to configure handler 'file' (check the "
                           "hydra.* settings)")
    assert os.listdir(tmp_path) == []


def test_an_error_at_a_sweeps_end_is_one_line_and_ends_its_parent_failed(tmp_path):
    """Hydra only warns when a callback fails: the sweep's end (its summary, its parent run) must not
    pass for a success. Here a folder stands where the summary is to be written."""
    sweep = ["-m", "generation.seed=1,2", "pipeline.until=plan", "dataset.limit=1", "hydra.sweep.dir=runs/sweep"]
    assert run_pipeline(sweep, cwd=tmp_path).returncode == 0
    sweep_dir = tmp_path / "runs" / "sweep"
    (sweep_dir / "sweep_summary.json").unlink()
    (sweep_dir / "sweep_summary.json").mkdir()
    result = run_pipeline([f"resume={sweep_dir}"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "UserWarning" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("run failed: [Errno 21] Is a directory") and str(sweep_dir) in last, last
    (parent,) = mlflow_client(tmp_path).search_runs(["1"])
    assert parent.info.status == "FAILED"
