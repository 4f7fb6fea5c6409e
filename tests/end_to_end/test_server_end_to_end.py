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
import subprocess
import sys
import time

import pytest

from pipeline.core.config import ASSETS_DIR
from pipeline.core.transcript import read_transcript
from tests.conftest import mlflow_client, only_run_dir, pipeline_env, run_pipeline
from tests.helpers.openai_server import (
    TransformersServe,
    free_port,
    serving_extra_missing,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(serving_extra_missing() is not None, reason=str(serving_extra_missing()))]
DEMO = ASSETS_DIR / "demo_model"
SECRET = "sk-e2e-7d41aa90c3b5"  # the key, in OPENAI_API_KEY only
LIMIT = 20


def through(server: TransformersServe, *more: str) -> list[str]:
    return ["backend=openai", f"backend.base_url={server.base_url}", f"runtime.model={server.model}", *more]


def error_line(result, prefix: str = "error") -> str:
    """The run's one error line (stage timings may come before it), with no traceback anywhere."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
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
    assert plan["memory"] is None and "offload" not in plan and plan["backend_options"] == {}  # not ours to decide
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
    assert not [key for key in run.data.params if key.startswith("plan.option.")]

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
    from tests.run.test_kill import ForkRunner
    from tests.run.test_signals import (
        run,  # the fork runner, sent a signal once the transcript has a record
    )

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
    assert as_executed(records[:len(kept)]) == as_executed(kept)  # the score stage adds only the scores
    assert len({r["sample_id"] for r in records}) == len(records) == limit
    (again,) = client.search_runs(["1"])
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"


def test_a_seed_sweep_runs_each_job_through_the_server(tmp_path, served):
    result = run_pipeline(["-m", *through(served, "generation=sampling", "generation.seed=1,2", "dataset.limit=8")],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")
    # (that the seed reaches the server is the conformance suite's seeded-sampling test, over a sampling copy of
    # the tool model: the demo model's generation_config.json says do_sample=false, which transformers serve obeys)
    for job in range(2):
        records = read_transcript(sweep_dir / str(job) / "transcript.jsonl")
        assert len(records) == 8 and all(r["status"] == "ok" for r in records), [r["error"] for r in records]
        plan = json.loads((sweep_dir / str(job) / "plan.json").read_text())
        assert plan["generation"]["seed"] == job + 1 and plan["generation"]["top_k"] is None  # 0 filters nothing
        # transformers serve seeds one global generator: the plan says what that means for 8 requests in flight
        assert any(w.startswith("sampling with backend.max_concurrency=8: each request's seed is sent")
                   for w in plan["warnings"]), plan["warnings"]
    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.params["generation.seed"] for c in children} == {"1", "2"}
    assert all(c.data.params["backend.name"] == "openai" for c in children)


def test_the_response_cache_answers_a_served_run_again_and_a_changed_setting_misses(tmp_path, served):
    cache = ["tracking=none", "dataset.limit=5", "cache.enabled=true", f"cache.dir={tmp_path / 'cache'}"]
    runs = {}
    for name, more in (("first", []), ("again", []), ("changed", ["generation.max_new_tokens=7"])):
        (tmp_path / name).mkdir()
        result = run_pipeline(through(served, *cache, *more), cwd=tmp_path / name)
        assert result.returncode == 0, result.stderr
        runs[name] = only_run_dir(tmp_path / name)
    hits = {name: json.loads((folder / "summary.json").read_text())["cache_hits"] for name, folder in runs.items()}
    assert hits == {"first": 0, "again": 5, "changed": 0}
    first, again = (read_transcript(runs[name] / "transcript.jsonl") for name in ("first", "again"))
    assert [r["response"] for r in again] == [r["response"] for r in first] and all(r["cached"] for r in again)


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


def test_the_server_killed_mid_run_fails_the_run_in_one_line_and_resume_finishes_it_once_it_is_back(tmp_path):
    # a server that stopped accepting connections is not a sample's failure: without this, every later request
    # was retried, became an error record, and the run "succeeded" with a transcript of errors no resume redoes
    limit = 16
    server = TransformersServe(DEMO, tmp_path / "serve.log")
    cwd = tmp_path / "work"
    cwd.mkdir()
    args = through(server, f"dataset.limit={limit}", "backend.max_concurrency=2", "backend.max_retries=2",
                   "backend.backoff_s=0.05")
    try:
        server.wait()
        process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=pipeline_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not _records_written(cwd) >= 4 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        server.process.kill()  # SIGKILL: no goodbye to the requests in flight
        server.process.wait()
        out, err = process.communicate(timeout=120)
        assert process.returncode == 1, err
        line = error_line(subprocess.CompletedProcess([], 1, out, err), prefix="run failed")
        run_dir = only_run_dir(cwd)
        assert line.startswith(f"run failed: the server at {server.base_url} stopped answering: connection to the "
                               "server failed: "), line
        assert "connection refused after 3 attempts" in line and line.endswith(f"continue with: python -m pipeline resume={run_dir}")
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "failed" and server.base_url in status["reason"]
        kept = read_transcript(run_dir / "transcript.jsonl")
        assert 4 <= len(kept) < limit and all(r["status"] == "ok" for r in kept), [r["error"] for r in kept]
        client = mlflow_client(cwd)
        (first,) = client.search_runs(["1"])
        assert first.info.status == "FAILED"

        server = TransformersServe(DEMO, tmp_path / "serve.log", port=server.port)  # the same URL, back again
        server.wait()
        resumed = run_pipeline([f"resume={run_dir}"], cwd=cwd)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        server.stop()
    records = read_transcript(run_dir / "transcript.jsonl")
    assert as_executed(records[:len(kept)]) == as_executed(kept)  # the score stage adds only the scores
    assert len({r["sample_id"] for r in records}) == len(records) == limit
    assert all(r["status"] == "ok" for r in records)
    (again,) = client.search_runs(["1"])
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"


def _records_written(cwd) -> int:
    found = list(cwd.glob("runs/*/*/transcript.jsonl"))
    return len(found[0].read_text().splitlines()) if found else 0


def test_tools_through_the_server_make_the_same_round_trips_and_score_as_in_process(tmp_path, tool_served):
    # the tool demo model writes its calls as <tool_call> text, which transformers serve passes through as text:
    # the backend reads them, the loop runs `add`, and the result goes back to the server as a tool message
    tools = ["dataset=tool_addition", "dataset.limit=5", "session=calculator_tools", "generation.max_new_tokens=64"]
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir(), remote.mkdir()
    in_process = run_pipeline(["runtime.model=tool-demo", *tools, "tracking=none"], cwd=local)
    assert in_process.returncode == 0, in_process.stderr
    result = run_pipeline(through(tool_served, *tools), cwd=remote)
    assert result.returncode == 0, result.stderr

    def steps(cwd):
        records = read_transcript(only_run_dir(cwd) / "transcript.jsonl")
        for record in records:
            (record["tool"] or {}).pop("seconds", None)  # how long `add` took
        return sorted((r["sample_id"], r["step"], r["kind"], r["status"], r["response"], r["score"], r["tool"],
                       r["prompt_tokens"], r["completion_tokens"], r["finish_reason"]) for r in records)

    mine = steps(remote)
    assert [step[1:3] for step in mine] == [(0, "tool_call"), (1, "tool_result"), (2, "answer")] * 5, mine
    assert mine == steps(local)  # greedy: the same calls, arguments, results, answers, scores and token counts
    summary = json.loads((only_run_dir(remote) / "summary.json").read_text())
    expected = json.loads((only_run_dir(local) / "summary.json").read_text())
    assert summary["accuracy"] == expected["accuracy"] == 1.0
    assert summary["tool_calls"] == expected["tool_calls"] == 5
    plan = json.loads((only_run_dir(remote) / "plan.json").read_text())
    assert [tool["function"]["name"] for tool in plan["tools"]] == ["add"]
    (run,) = mlflow_client(remote).search_runs(["1"])
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == 1.0


def as_executed(records: list[dict]) -> list[dict]:
    """Records as execute wrote them: the score stage's fields (score, extracted) back to null."""
    return [{**record, "score": None, "extracted": None} for record in records]
