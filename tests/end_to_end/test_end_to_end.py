"""End to end through `python -m pipeline`, on the shipped demo model, read back from disk and MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from pipeline.core.config import STAGES
from pipeline.core.transcript import read_transcript
from tests.conftest import (
    DEMO_DATASET,
    mlflow_client,
    only_run_dir,
    pipeline_env,
    run_pipeline,
)

pytestmark = pytest.mark.slow
GREEDY_FLOOR = 0.9  # the demo model's measured greedy accuracy is reported in README.md


def test_default_run_writes_the_run_folder_and_one_mlflow_run(tmp_path):
    result = run_pipeline([], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path)
    for name in ["config.json", "plan.json", "transcript.jsonl", "summary.json", "status.json", "run.log",
                 ".hydra/config.yaml"]:
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "status.json").read_text())["state"] == "success"

    records = read_transcript(run_dir / "transcript.jsonl")
    expected_ids = [json.loads(line)["id"] for line in DEMO_DATASET.read_text().splitlines()]
    assert [r["sample_id"] for r in records] == expected_ids
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_samples"] == len(records)
    assert summary["accuracy"] == pytest.approx(sum(r["score"] for r in records) / len(records))
    assert summary["accuracy"] >= GREEDY_FLOOR
    assert summary["tokens_per_second"] > 0 and set(summary["stage_seconds"]) == set(STAGES)
    assert f"samples   {len(records)}" in result.stdout and str(run_dir.name) in result.stdout

    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("pipeline")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id in result.stdout
    assert run.info.run_name == "demo on addition"  # what ran, not when
    assert run.data.params["generation.temperature"] == "0.0"
    assert run.data.params["runtime.model"] == "demo"
    options = json.loads((run_dir / "plan.json").read_text())["backend_options"]  # the kind's own, each a param
    assert run.data.params["plan.option.attn_implementation"] == options["attn_implementation"] == "sdpa"
    assert run.data.params["plan.option.offload"] == "none" and "plan.option.max_memory" not in run.data.params
    saved = json.loads((run_dir / "config.json").read_text())
    assert run.data.params["generation.max_new_tokens"] == str(saved["generation"]["max_new_tokens"])
    assert run.data.metrics["accuracy"] == pytest.approx(summary["accuracy"])
    assert all(f"stage/{stage}/seconds" in run.data.metrics for stage in STAGES)
    assert run.data.tags["config_hash"] == records[0]["config_hash"]
    assert run.data.tags["version.transformers"].startswith("5.")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"transcript.jsonl", "plan.json", "summary.json", "config.json", "run.log", ".hydra"} <= artifacts


def test_settings_from_the_command_line_reach_the_run(tmp_path):
    result = run_pipeline(["generation.temperature=0.7", "generation.seed=3", "session.system_prompt=Add carefully.",
                           "dataset.limit=12", "runtime.batch_size=5", "tracking=none", "hydra.run.dir=my_run"],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "my_run"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["generation"]["temperature"] == 0.7 and config["generation"]["seed"] == 3
    records = read_transcript(run_dir / "transcript.jsonl")
    assert len(records) == 12 and max(r["batch"] for r in records) == 2  # batches of 5, 5, 2
    assert all(r["messages"][0] == {"role": "system", "content": "Add carefully."} for r in records)
    assert not (tmp_path / "runs" / "mlflow.db").exists(), "tracking=none writes no MLflow store"
    assert "mlflow    off" in result.stdout


def test_until_plan_prints_the_plan_and_loads_no_weights(tmp_path):
    result = run_pipeline(["pipeline.until=plan"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["model"]["reference"] == "demo" and plan["device"] == "cpu" and plan["dtype"] == "float32"
    assert plan["num_samples"] == 200 and plan["longest_prompt_tokens"] + 8 <= plan["context_length"]
    run_dir = only_run_dir(tmp_path)
    assert json.loads((run_dir / "plan.json").read_text()) == plan
    assert not (run_dir / "transcript.jsonl").exists()
    assert "load:" not in (run_dir / "run.log").read_text()
    assert not (tmp_path / "runs" / "mlflow.db").exists(), "a dry run leaves no MLflow run"


def test_cfg_job_shows_the_composed_config(tmp_path):
    result = run_pipeline(["--cfg", "job", "generation.temperature=0.3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = OmegaConf.create(result.stdout)
    assert shown.generation.temperature == 0.3 and shown.runtime.model == "demo"
    assert not (tmp_path / "runs").exists()


def test_a_sweep_makes_a_parent_run_with_one_child_per_job(tmp_path):
    result = run_pipeline(["-m", "generation.temperature=0,0.7,1.5", "generation.seed=1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")
    for job in range(3):
        assert len(read_transcript(sweep_dir / str(job) / "transcript.jsonl")) == 200
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]
    assert [job["state"] for job in jobs] == ["success"] * 3

    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("run_type") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 4 and len(children) == 3
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    accuracy = {float(c.data.params["generation.temperature"]): c.data.metrics["accuracy"] for c in children}
    assert set(accuracy) == {0.0, 0.7, 1.5}
    assert sorted(c.info.run_name for c in children) == [  # what each job is, not when it ran
        "0 · demo on addition · generation.temperature=0 generation.seed=1",
        "1 · demo on addition · generation.temperature=0.7 generation.seed=1",
        "2 · demo on addition · generation.temperature=1.5 generation.seed=1"]
    assert accuracy[0.0] >= GREEDY_FLOOR
    assert accuracy[0.0] - accuracy[1.5] >= 0.1, accuracy  # the swept value visibly changes the outcome
    assert parent.data.metrics["best_accuracy"] == max(accuracy.values())
    # the model loaded once: the later jobs reused it (pipeline.backends.transformers.reuse), as their records
    # and MLflow tags say
    loads = [json.loads((sweep_dir / str(job) / "load.json").read_text()) for job in range(3)]
    assert [entry["reused"] for entry in loads] == [False, True, True]
    assert {entry["reused_from"] for entry in loads[1:]} == {str(sweep_dir / "0")}
    tags = {c.info.run_name[0]: c.data.tags["load.reused"] for c in children}
    assert tags == {"0": "false", "1": "true", "2": "true"}


def test_the_saved_temperature_sweep_runs_every_job(tmp_path):
    result = run_pipeline(["+experiment=temperature_sweep", "dataset.limit=10", "tracking=none"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")
    temperatures = sorted(json.loads((sweep_dir / str(job) / "config.json").read_text())["generation"]["temperature"]
                          for job in range(3))
    assert temperatures == [0.0, 0.7, 1.5]


def test_a_mistake_found_while_planning_exits_2_and_leaves_nothing(tmp_path):
    result = run_pipeline([f"dataset.path={tmp_path / 'missing.jsonl'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: dataset.path=")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists(), "no run folder, no MLflow store"


def test_a_run_that_fails_midway_is_failed_in_mlflow_and_keeps_its_partial_transcript(tmp_path):
    # The real entry point, with generation made to fail on the second batch.
    script = textwrap.dedent("""
        import sys
        import pipeline.backends.transformers.backend as backend
        real = backend.generate_batch
        calls = []
        def flaky(runtime, batch, *args):
            calls.append(len(batch))
            if len(calls) == 2:
                raise RuntimeError("the accelerator fell over")
            return real(runtime, batch, *args)
        backend.generate_batch = flaky
        from pipeline.__main__ import main
        sys.argv = ["pipeline", "runtime.batch_size=4", "dataset.limit=10"]
        main()
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=pipeline_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("run failed: RuntimeError: the accelerator fell over")
    run_dir = only_run_dir(tmp_path)
    assert len(read_transcript(run_dir / "transcript.jsonl")) == 4  # the first batch survives
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "fell over" in status["reason"]
    assert "Traceback" in (run_dir / "run.log").read_text()

    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    assert run.info.status == "FAILED"
    assert "transcript.jsonl" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_two_runs_started_together_get_their_own_folders(tmp_path, tiny_model):
    command = [sys.executable, "-m", "pipeline", f"runtime.model={tiny_model}", "pipeline.until=resolve", "tracking=none"]
    processes = [subprocess.Popen(command, cwd=tmp_path, env=pipeline_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
                 for _ in range(3)]
    assert [p.wait(timeout=120) for p in processes] == [0, 0, 0]
    folders = {p.name for p in (tmp_path / "runs").glob("*/*") if p.is_dir()}
    assert len(folders) == 3  # distinct even when they share the same second


def test_a_sweep_with_a_failing_job_finishes_the_others_and_marks_the_parent_failed(tmp_path):
    result = run_pipeline(["-m", f"dataset.path={DEMO_DATASET},{tmp_path / 'missing.jsonl'}", "dataset.limit=5"],
                          cwd=tmp_path)
    assert result.returncode == 1
    assert "error: dataset.path=" in result.stderr and "Traceback" not in result.stderr
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")
    jobs = json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]
    assert [job["state"] for job in jobs] == ["success", "failed"]
    assert "file not found" in jobs[1]["reason"]

    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("run_type") == "sweep"]
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs_failed"] == 1
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert child.info.status == "FINISHED"  # the job that failed while planning opened no MLflow run
