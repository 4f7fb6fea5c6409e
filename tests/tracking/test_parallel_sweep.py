"""Parallel sweeps on the SQLite store: 4 jobs under the joblib launcher with 2 worker processes.

Every job's run must reach MLflow (no "database is locked" loss), the store must be created once
(the sweep creates it, whole, before any worker starts), and the jobs must share one sweep folder
while each has its own.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import mlflow_client, run_pipeline

pytestmark = pytest.mark.slow


def test_a_4_job_sweep_on_2_joblib_workers_records_every_job(tmp_path):
    result = run_pipeline(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "generation.temperature=0.5",
                           "generation.seed=1,2,3,4", "dataset.limit=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")  # one sweep folder, whatever process resolved it
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]
    assert [job["state"] for job in jobs] == ["success"] * 4
    pids = {json.loads((sweep_dir / str(n) / "status.json").read_text())["pid"] for n in range(4)}
    assert len(pids) == 2, "two worker processes ran the jobs"

    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("run_type") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4
    assert all(c.info.status == "FINISHED" and c.data.metrics["samples"] == 3 for c in children)
    assert sorted(c.data.params["generation.seed"] for c in children) == [str(s) for s in range(1, 5)]
    assert {c.data.tags["run_dir"] for c in children} == {str(sweep_dir / str(n)) for n in range(4)}
    assert parent.info.status == "FINISHED"
