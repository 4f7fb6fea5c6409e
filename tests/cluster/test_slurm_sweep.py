"""Sweeps on a real one-node SLURM cluster with accounting, tracked in a real MLflow server on PostgreSQL
(scripts/cluster.sh, brought up once by tests/cluster/conftest.py), through `python -m pipeline`:

- a sweep ends as a local one does (table, comparison, plots, one parent FINISHED with a child per
  point, exit 0), with several points per SLURM job loading the model once per job, and the
  launcher's settings (CPUs, memory, time, setup lines; no GPU for runtime.device=cpu) in the job;
- a job cancelled with scancel is that job's failure (its point interrupted, saying so; the other
  finishes; the parent FAILED; exit 1), and the resume submits only that point; a job that fails
  before Python starts fails its points, naming its log; a GPU the cluster lacks is refused in one line;
- two sweeps at once into one new experiment lose no run and no record.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_pipeline

pytestmark = pytest.mark.slow
TIMEOUT_S = 400


def fresh(name: str) -> str:
    """An experiment name no earlier session used (PIPELINE_TEST_CLUSTER_DIR keeps a server's runs)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def sweep_folder(cwd: Path) -> Path:
    (folder,) = (cwd / "runs" / "multirun").glob("*/*")
    return folder


def status(job: Path) -> dict:
    return json.loads((job / "status.json").read_text())


def children_of(client, parent) -> list:
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return sorted(runs, key=lambda r: r.data.tags["run_dir"])


def test_a_slurm_sweep_with_two_points_per_job_ends_as_a_local_sweep(cluster, tmp_path):
    name = fresh("slurm-sweep")
    result = run_pipeline(cluster.launcher(
        "hydra.launcher.points_per_job=2", "hydra.launcher.timeout_min=7",
        'hydra.launcher.setup=["echo $SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID >> setup-ran.txt"]',
        f"tracking.experiment={name}",
        "dataset.limit=2", "generation.temperature=0,0.7,1.0"), cwd=tmp_path, env=cluster.env(), timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert "sweep     3 jobs, 0 failed" in result.stdout
    sweep = sweep_folder(tmp_path)
    assert [job["state"] for job in json.loads((sweep / "sweep_summary.json").read_text())["jobs"]] == ["success"] * 3
    assert (sweep / "comparison" / "comparison.md").is_file() and list((sweep / "comparison" / "plots").glob("*.png"))

    # the launcher's settings reached SLURM: one array of two jobs, each with what was asked and no GPU
    (array,) = {folder.name.split("_")[0] for folder in (sweep / ".submitit").iterdir() if folder.is_dir()}
    asked = cluster.slurm("sacct", "-j", array, "-X", "-n", "-P", "-o", "JobID,ReqCPUS,ReqMem,Timelimit,ReqTRES")
    assert sorted(asked.split()) == [f"{array}_{n}|1|1G|00:07:00|billing=1,cpu=1,mem=1G,node=1" for n in range(2)]
    assert sorted((tmp_path / "setup-ran.txt").read_text().split()) == [f"{array}-0", f"{array}-1"]
    assert not list((sweep / ".submitit").rglob("*.pkl"))  # submitit's pickles hold the config, secrets and all
    assert list((sweep / ".submitit").rglob("*_log.err"))  # the jobs' logs stay

    # points 0 and 1 shared a job: one process, the model loaded once; point 2 had a job of its own
    loads = [json.loads((sweep / str(n) / "load.json").read_text()) for n in range(3)]
    assert loads[0]["process"] == loads[1]["process"] != loads[2]["process"]
    assert [load["reused"] for load in loads] == [False, True, False]

    client = cluster.client()
    experiment = client.get_experiment_by_name(name)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.run_type = 'sweep'")
    assert parent.info.status == "FINISHED"
    children = children_of(client, parent)
    assert [c.data.tags["run_dir"] for c in children] == [str(sweep / str(n)) for n in range(3)]
    assert all(c.info.status == "FINISHED" and c.data.metrics["samples"] == 2 for c in children)
    assert sorted(c.data.params["generation.temperature"] for c in children) == ["0.0", "0.7", "1.0"]
    assert len(client.search_runs([experiment.experiment_id])) == 4  # the parent and its three, nothing else


def test_a_cancelled_job_fails_alone_and_the_resume_submits_only_its_point(cluster, tmp_path):
    name = fresh("slurm-cancel")
    # point 1's job waits in its setup lines, so it is surely running, and its point not started, when cancelled
    blocking = "hydra.launcher.setup=['[ \"$SLURM_ARRAY_TASK_ID\" != 1 ] || sleep 600']"
    command = [sys.executable, "-m", "pipeline", *cluster.launcher(
        blocking, f"tracking.experiment={name}", "dataset.limit=2", "generation.temperature=0,0.7")]
    sweep_run = subprocess.Popen(command, cwd=tmp_path, env=cluster.env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    try:
        job = wait_for_running(cluster, "_1")
        cluster.slurm("scancel", job)
        stdout, stderr = sweep_run.communicate(timeout=TIMEOUT_S)
    finally:
        sweep_run.kill()
    assert sweep_run.returncode == 1, stderr
    assert "sweep     2 jobs, 1 failed" in stdout
    sweep = sweep_folder(tmp_path)
    assert status(sweep / "0")["state"] == "success"
    cancelled = status(sweep / "1")
    assert cancelled["state"] == "interrupted"
    assert f"SLURM job {job} ended CANCELLED" in cancelled["reason"]
    assert "before this point started" in cancelled["reason"]
    client = cluster.client()
    experiment = client.get_experiment_by_name(name)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.run_type = 'sweep'")
    assert parent.info.status == "FAILED"
    assert [c.data.tags["run_dir"] for c in children_of(client, parent)] == [str(sweep / "0")]

    resumed = run_pipeline([f"resume={sweep}", "hydra.launcher.setup=[]"], cwd=tmp_path, env=cluster.env(),
                           timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr
    # Hydra's own log (the launcher's lines) goes to stdout
    assert "resume: 1 of 2 points ended with success; submitting the other 1" in resumed.stdout
    assert "sweep     2 jobs, 0 failed" in resumed.stdout
    assert [status(sweep / str(n))["state"] for n in range(2)] == ["success", "success"]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # the same parent, taken up again
    children = children_of(client, parent)
    assert [c.data.tags["run_dir"] for c in children] == [str(sweep / "0"), str(sweep / "1")]
    assert all(c.info.status == "FINISHED" for c in children)


def test_a_job_whose_setup_fails_fails_its_points_saying_where_its_log_is(cluster, tmp_path):
    name = fresh("slurm-setup")
    result = run_pipeline(cluster.launcher('hydra.launcher.setup=["exit 3"]', "hydra.launcher.points_per_job=2",
                                           f"tracking.experiment={name}", "generation.seed=1,2"),
                          cwd=tmp_path, env=cluster.env(), timeout=TIMEOUT_S)
    assert result.returncode == 1, result.stderr
    sweep = sweep_folder(tmp_path)
    for point in (sweep / "0", sweep / "1"):  # never started: listed all the same, with why
        failed = status(point)
        assert failed["state"] == "failed"
        assert "ended FAILED before this point started" in failed["reason"]
        assert str(sweep / ".submitit") in failed["reason"]  # its log
    assert "sweep     2 jobs, 2 failed" in result.stdout
    client = cluster.client()
    (parent,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert parent.info.status == "FAILED"


def test_a_gpu_the_cluster_lacks_is_refused_by_slurm_in_one_line_leaving_nothing(cluster, tmp_path):
    # the in-process model on runtime.device=auto asks for the launcher's GPU: sbatch gets it, and this node has none
    args = [a for a in cluster.launcher("generation.seed=1,2") if a != "runtime.device=cpu"]
    result = run_pipeline(args, cwd=tmp_path, env=cluster.env(), timeout=TIMEOUT_S)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: SLURM refused the jobs (sbatch: error: Invalid generic resource (gres) specification)")
    assert not (tmp_path / "runs" / "multirun").exists()


def wait_for_running(cluster, suffix: str, timeout: float = 240) -> str:
    """The id of the cluster's job ending in `suffix` once SLURM says it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in cluster.slurm("squeue", "-h", "-o", "%i %T").splitlines():
            job, state = line.split()
            if job.endswith(suffix) and state == "RUNNING":
                return job
        time.sleep(0.5)
    raise AssertionError(f"no job ending in {suffix} ran within {timeout} s: {cluster.slurm('squeue')}")


def test_two_sweeps_at_once_into_one_new_experiment_lose_no_run(cluster, tmp_path):
    name = fresh("slurm-shared")
    sweeps = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        sweeps.append(subprocess.Popen(
            [sys.executable, "-m", "pipeline", *cluster.launcher(
                "hydra.launcher.points_per_job=2", f"tracking.experiment={name}", "dataset.limit=3",
                "generation.temperature=0.5", "generation.seed=1,2")],
            cwd=tmp_path / folder, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for sweep_run in sweeps:
        _, stderr = sweep_run.communicate(timeout=TIMEOUT_S)
        assert sweep_run.returncode == 0, stderr
    client = cluster.client()
    experiment = client.get_experiment_by_name(name)
    parents = client.search_runs([experiment.experiment_id], "tags.run_type = 'sweep'")
    assert len(parents) == 2 and {p.info.status for p in parents} == {"FINISHED"}
    assert not [run for run in client.search_runs(["0"])  # nothing landed in the Default experiment
                if run.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents}]
    jobs = set()
    for parent in parents:
        children = children_of(client, parent)
        assert len(children) == 2 and len({Path(c.data.tags["run_dir"]).parent for c in children}) == 1
        jobs |= {c.data.tags["run_dir"] for c in children}
        for child in children:
            assert child.info.status == "FINISHED" and child.data.metrics["samples"] == 3
            traces = client.search_traces(locations=[experiment.experiment_id], run_id=child.info.run_id)
            assert len(traces) == 3  # a trace per answer: no record lost
    assert jobs == {str(sweep_folder(tmp_path / folder) / str(n)) for folder in ("a", "b") for n in range(2)}
    assert len(client.search_runs([experiment.experiment_id])) == 6
