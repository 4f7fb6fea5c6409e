"""backend=openai end to end: `python -m pipeline` against a real `transformers serve` over the demo model.

One server for the module (about 10 s to start; tests/openai_server.py). Through it: the demo task
scores what the in-process run scores (greedy) with transcript records of the same shape; the API key
(in the variable api_key_env names) appears nowhere the run writes or prints; an unreachable server
and a model it does not serve are one line and exit 2 with nothing created; SIGTERM during execute
then resume finishes the same MLflow run keeping the records written; a sweep runs each job through it.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from conftest import mlflow_client, only_run_dir, run_pipeline
from openai_server import TransformersServe, free_port, serving_extra_missing

from pipeline.core.config import ASSETS_DIR
from pipeline.core.transcript import read_transcript

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(serving_extra_missing() is not None, reason=str(serving_extra_missing()))]
DEMO = ASSETS_DIR / "demo_model"
SECRET = "sk-e2e-7d41aa90c3b5"  # the key, in OPENAI_API_KEY only
LIMIT = 20


def through(server: TransformersServe, *more: str) -> list[str]:
    return ["backend=openai", f"backend.base_url={server.base_url}", f"runtime.model={server.model}", *more]


def error_line(result) -> str:
    """The run's one error line (stage timings may come before it), with no traceback anywhere."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_the_demo_task_through_the_server_scores_as_in_process_and_the_key_is_nowhere(tmp_path, served):
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir(), remote.mkdir()
    in_process = run_pipeline([f"dataset.limit={LIMIT}", "tracking=none"], cwd=local)
    assert in_process.returncode == 0, in_process.stderr
    result = run_pipeline(through(served, f"dataset.limit={LIMIT}"), cwd=remote, env={"OPENAI_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr

    mine, theirs = only_run_dir(remote), only_run_dir(local)
    records, expected = read_transcript(mine / "transcript.jsonl"), read_transcript(theirs / "transcript.jsonl")
    assert len(records) == LIMIT and [set(r) for r in records] == [set(r) for r in expected]
    by_id = {r["sample_id"]: r for r in expected}
    assert {r["sample_id"]: (r["response"], r["score"]) for r in records} == \
           {i: (r["response"], r["score"]) for i, r in by_id.items()}  # greedy: the same answers, the same scores
    assert all(r["status"] == "ok" and r["prompt_tokens"] > 0 and 0 < r["ttft_s"] <= r["latency_s"] for r in records)
    summary = json.loads((mine / "summary.json").read_text())
    assert summary["accuracy"] == json.loads((theirs / "summary.json").read_text())["accuracy"]
    assert summary["peak_memory_bytes"] is None  # the server's memory is not measured from here

    plan = json.loads((mine / "plan.json").read_text())
    assert plan["backend"] == "openai" and plan["device"] == "server" and plan["dtype"] == "server-decides"
    identity = plan["backend_plan"]["identity"]
    assert identity["endpoint"] == served.base_url and identity["model"] == served.model
    assert identity["reported"]["owned_by"] == "local"
    options = {o["name"]: o for o in plan["backend_plan"]["options"]}
    assert options["api_key"]["value"] == "$OPENAI_API_KEY" and options["token_source"]["value"] == "estimate"
    assert not (mine / "load.json").exists()  # nothing loaded here
    inputs = json.loads((mine / "inputs.json").read_text())  # what a resume checks: the id and URL, no local files
    assert inputs["runtime.model"] == {"as typed": served.model, "path": "", "endpoint": served.base_url}

    (run,) = mlflow_client(remote).search_runs(["1"])
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == summary["accuracy"]
    assert run.data.tags["model.endpoint"] == served.base_url and run.data.tags["model.kind"] == "served"
    assert json.loads(run.data.tags["model.reported"])["owned_by"] == "local"
    assert run.data.params["backend.base_url"] == served.base_url and run.data.params["plan.device"] == "server"

    assert SECRET not in result.stdout + result.stderr
    leaks = [str(p) for p in remote.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks  # run folder, .hydra, MLflow's database and artifacts


@pytest.mark.parametrize("case", ["unreachable", "not served"])
def test_a_server_that_cannot_answer_for_the_model_is_one_line_and_nothing_is_created(tmp_path, served, case):
    if case == "unreachable":
        args = ["backend=openai", f"backend.base_url=http://127.0.0.1:{free_port()}/v1", "runtime.model=m",
                "backend.timeout_s=5"]
        said = "cannot reach the server at http://127.0.0.1:"
    else:
        args = through(served)[:-1] + ["runtime.model=llama-70b"]
        said = f"runtime.model='llama-70b' is not served by {served.base_url}: it serves {served.model}"
    result = run_pipeline(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert said in error_line(result)
    assert not (tmp_path / "runs").exists()


def test_sigterm_during_execute_keeps_whole_batches_and_resume_finishes_the_same_mlflow_run(tmp_path, served):
    from test_kill import ForkRunner
    from test_signals import run  # the fork runner, sent a signal once the transcript has a record

    limit = 40
    forker = ForkRunner()
    try:
        code, output = run(forker, tmp_path, through(served, f"dataset.limit={limit}", "backend.max_concurrency=2"),
                           "SIGTERM")
        assert code == 143, output
        run_dir = only_run_dir(tmp_path)
        assert json.loads((run_dir / "status.json").read_text())["state"] == "interrupted"
        kept = read_transcript(run_dir / "transcript.jsonl")
        assert 1 <= len(kept) < limit
        batches = {}
        for record in kept:
            batches.setdefault(record["batch"], []).append(record)
        # a batch is max_concurrency requests, written as it completes: the kill lost only what was in flight
        assert all(len(rows) == 2 for rows in batches.values()), {b: len(r) for b, r in batches.items()}
        client = mlflow_client(tmp_path)
        (first,) = client.search_runs(["1"])
        assert first.info.status == "KILLED"

        hint = re.search(r"continue with: python -m pipeline (.*)\)$", output.strip().splitlines()[-1])
        assert hint, output
        command = hint.group(1)
        code, output = run(forker, tmp_path, shlex.split(command))
        assert code == 0, output
    finally:
        forker.close()
    records = read_transcript(run_dir / "transcript.jsonl")
    assert records[:len(kept)] == kept
    assert len({r["sample_id"] for r in records}) == len(records) == limit
    (again,) = client.search_runs(["1"])
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"


def test_a_seed_sweep_runs_each_job_through_the_server(tmp_path, served):
    result = run_pipeline(["-m", *through(served, "generation=sampling", "generation.seed=1,2", "dataset.limit=8")],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")
    # (that the seed reaches the server is the conformance suite's seeded-sampling test: the demo model is too
    # sure of its sums for two seeds to differ on a few samples)
    for job in range(2):
        records = read_transcript(sweep_dir / str(job) / "transcript.jsonl")
        assert len(records) == 8 and all(r["status"] == "ok" for r in records), [r["error"] for r in records]
        plan = json.loads((sweep_dir / str(job) / "plan.json").read_text())
        assert plan["generation"]["seed"] == job + 1 and plan["generation"]["top_k"] is None  # 0 filters nothing
    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.params["generation.seed"] for c in children} == {"1", "2"}
    assert all(c.data.params["backend.name"] == "openai" for c in children)


@pytest.mark.parametrize("setting, said", [
    ("session.prefill=The", "session.prefill='The': the chat completions API has no way to start the answer"),
    ("session.chat_template=false", "session.chat_template=false: a server always applies its own chat template"),
    ("session.truncation=left", "session.truncation=left: a server cannot cut prompts from the left"),
    ("generation.min_p=0.05", "generation.min_p=0.05: the chat completions API has no such field"),
])
def test_a_setting_only_an_in_process_prompt_can_honour_is_one_line_before_the_server_is_asked(tmp_path, setting, said):
    # port 9 (discard) is never asked: the refusal comes first
    result = run_pipeline(["backend=openai", "backend.base_url=http://127.0.0.1:9/v1", "runtime.model=m", setting],
                          cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert said in error_line(result)
    assert not (tmp_path / "runs").exists()
