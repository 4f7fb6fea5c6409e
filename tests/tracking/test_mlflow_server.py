"""Against a real `mlflow server` on loopback (tests/mlflow_server.py): runs and sweeps recorded on
it, a resumed sweep taking up its own runs again; the server stopped mid-run (the run fails within
seconds, keeps its records, and a resume after the restart finishes the same MLflow run); a dead
server refused quickly, or left behind with tracking.required=false and uploaded later by
`python -m pipeline.sync`; a password in tracking.uri that reaches nothing but the server's door."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from pipeline.core.transcript import read_transcript
from tests.conftest import pipeline_env, run_pipeline
from tests.helpers.mlflow_server import MlflowServer, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


def runs_of(server, **tags) -> list:
    client = server.client()
    experiment = client.get_experiment_by_name("pipeline")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


def test_a_run_and_a_resumed_sweep_are_recorded_on_the_server(server, tmp_path):
    result = run_pipeline([f"tracking.uri={server.uri}", "dataset.limit=5"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p for p in (tmp_path / "runs").glob("*/*") if p.parent.name != "multirun"]
    (run,) = runs_of(server, run_dir=str(run_dir))
    assert run.info.status == "FINISHED" and run.data.metrics["samples"] == 5
    assert "transcript.jsonl" in {a.path for a in server.client().list_artifacts(run.info.run_id)}
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # the server's store, not a local one

    sweep = ["-m", f"tracking.uri={server.uri}", "dataset.limit=5", "generation.temperature=0.5", "generation.seed=1,2"]
    assert run_pipeline(sweep, cwd=tmp_path).returncode == 0
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")
    # job 1 was interrupted after two records, the third torn by the kill
    job = sweep_dir / "1"
    lines = (job / "transcript.jsonl").read_text().splitlines(keepends=True)
    (job / "transcript.jsonl").write_text("".join(lines[:2]) + lines[2][:20])
    (job / "status.json").write_text(json.dumps({"state": "interrupted", "reason": "killed", "time": 0}))
    untouched = (sweep_dir / "0" / "transcript.jsonl").stat().st_mtime_ns

    resumed = run_pipeline([f"resume={sweep_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (sweep_dir / "0" / "transcript.jsonl").stat().st_mtime_ns == untouched  # completed: skipped
    assert [r["sample_id"] for r in read_transcript(job / "transcript.jsonl")] == \
        [r["sample_id"] for r in read_transcript(sweep_dir / "0" / "transcript.jsonl")]
    (parent,) = runs_of(server, run_type="sweep")
    children = runs_of(server, **{"mlflow.parentRunId": parent.info.run_id})
    assert len(children) == 2, "the resumed job went on in its own MLflow run"
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.metrics["samples"] for c in children} == {5.0}


def test_a_server_stopped_mid_run_fails_it_quickly_and_a_resume_finishes_the_same_run(server, tmp_path):
    total = 80  # one record a batch: the run goes on for seconds, so the fault lands in it
    process = subprocess.Popen([sys.executable, "-m", "pipeline", f"tracking.uri={server.uri}",
                                f"dataset.limit={total}", "runtime.batch_size=1"], cwd=tmp_path, env=pipeline_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    transcript = None
    while time.monotonic() < deadline and process.poll() is None:  # stop the server once records are coming
        found = list((tmp_path / "runs").glob("*/*/transcript.jsonl"))
        if found and len(found[0].read_bytes().splitlines()) >= 3:
            transcript = found[0]
            break
        time.sleep(0.05)
    assert transcript is not None, process.communicate()[1]
    server.stop(crash=True)  # gone at once: a graceful stop may outlast execute
    running_at_fault = process.poll() is None  # execute may have written its last record by now: the fault then
    # lands on the run's next MLflow call all the same, which is what is tested (on a quiet machine 80 records took
    # under a second after the first 3)
    try:
        _, stderr = process.communicate(timeout=240)
        ended = time.time()
    finally:
        server.start()  # the same port and database, as after a restart
    run_dir = transcript.parent
    assert process.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"run failed: MLflow tracking at {server.uri} failed") and "Traceback" not in stderr, last
    assert running_at_fault, "the server went away while the run went on"
    assert len(read_transcript(transcript)) == total  # execute finished its records; the next MLflow call failed
    waited = ended - transcript.stat().st_mtime  # from execute's last record to the exit: the failed MLflow call
    assert waited < 60, f"{waited:.0f} s after execute ended"  # seconds, not minutes of MLflow's retries
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"

    resumed = run_pipeline([f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    (run,) = runs_of(server, run_dir=str(run_dir))  # one MLflow run, begun before the fault, finished after
    assert run.info.status == "FINISHED" and run.data.metrics["samples"] == total
    assert len(read_transcript(transcript)) == total


def test_a_dead_server_is_an_error_in_seconds_or_is_left_for_sync(server, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    refused = run_pipeline([f"tracking.uri={dead}", "tracking.timeout_s=2", "dataset.limit=3"], cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"MLflow tracking at {dead} failed: no answer" in refused.stderr.strip().splitlines()[-1]
    assert "tracking.required=false" in refused.stderr
    assert time.monotonic() - started < 60  # interpreter start-up included; no minutes of retries

    offline = run_pipeline([f"tracking.uri={dead}", "tracking.required=false", "dataset.limit=3",
                            "hydra.run.dir=offline_run"], cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert "python -m pipeline.sync" in offline.stdout
    run_dir = tmp_path / "offline_run"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "success"
    assert json.loads((run_dir / "tracking.json").read_text())["state"] == "offline"

    synced = run_pipeline([str(run_dir), "--uri", server.uri], cwd=tmp_path, module="pipeline.sync")
    assert synced.returncode == 0, synced.stderr
    (run,) = runs_of(server, run_dir=str(run_dir.resolve()))
    assert run.info.status == "FINISHED" and run.data.metrics["samples"] == 3
    assert run.data.params["generation.max_new_tokens"] == "8" and run.data.params["plan.device"] == "cpu"
    assert "transcript.jsonl" in {a.path for a in server.client().list_artifacts(run.info.run_id)}
    assert json.loads((run_dir / "tracking.json").read_text())["state"] == "finished"


def test_a_password_in_the_tracking_uri_reaches_no_output_file_or_mlflow_record(server, tmp_path):
    """tracking.uri=http://user:SECRET@host: the run is recorded, and the password is nowhere: not on
    stdout or stderr, not in the run folder's files (Hydra's own copies of the command line in .hydra/
    included), not in the server's store or artifacts (params, tags, run name, uploaded files). A
    resume, which replays the command line from .hydra/, asks for it again rather than using the mask."""
    secret = "SECRET-pw-31415"
    uri = f"http://alice:{secret}@127.0.0.1:{server.port}"
    result = run_pipeline([f"tracking.uri={uri}", "dataset.limit=2", "hydra.run.dir=runs/pw"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout and secret not in result.stderr
    assert "http://***@127.0.0.1" in result.stdout  # the summary names the store, masked
    run_dir = tmp_path / "runs" / "pw"
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    assert "http://***@127.0.0.1" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    refused = run_pipeline(["resume=runs/pw"], cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "tracking.uri held a secret" in refused.stderr.strip().splitlines()[-1]
    again = run_pipeline(["resume=runs/pw", f"tracking.uri={uri}"], cwd=tmp_path)
    assert again.returncode == 0 and "nothing to resume" in again.stdout, again.stderr
    on_server = [p for p in server.folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert on_server == []  # the store (params, tags, names), the artifacts, the server's log
    (run,) = runs_of(server, run_dir=str(run_dir))
    assert run.info.status == "FINISHED" and run.data.params["tracking.uri"].startswith("http://***@127.0.0.1")
    artifacts = {a.path for a in server.client().list_artifacts(run.info.run_id)}
    assert {"config.json", "run.log", "tracking.json"} <= artifacts
