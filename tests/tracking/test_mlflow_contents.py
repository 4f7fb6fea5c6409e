"""What a real sweep leaves in MLflow, read back through MlflowClient: runs, links, params, tags,
artifacts, the dataset input, traces with their spans and times, and the parent's comparison."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from pipeline.core.config import ASSETS_DIR
from pipeline.core.transcript import read_transcript
from tests.conftest import mlflow_client, run_pipeline

pytestmark = pytest.mark.slow
TOOL_DATASET = ASSETS_DIR / "datasets" / "tool_addition.jsonl"


@pytest.fixture(scope="module")
def tool_sweep(tmp_path_factory):
    """The saved tools experiment on 3 samples, its two jobs in joblib worker processes."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_pipeline(["+experiment=tools", "dataset.limit=3", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    client = mlflow_client(cwd)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("run_type") == "sweep"]
    children = {r.data.params["session.name"]: r for r in runs if r is not parent}
    (sweep_dir,) = (cwd / "runs" / "multirun").glob("*/*")
    return result, client, parent, children, sweep_dir


def test_the_sweep_parent_is_named_after_what_it_sweeps_and_links_jobs_from_other_processes(tool_sweep):
    _, _, parent, children, _ = tool_sweep
    assert parent.info.run_name == "sweep tools: session" and parent.data.tags["swept"] == "session"
    assert set(children) == {"default", "calculator_tools"}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children.values())


def test_a_job_carries_resolved_params_tags_and_its_run_folder(tool_sweep):
    _, client, _, children, sweep_dir = tool_sweep
    run = children["calculator_tools"]
    job_dir = Path(run.data.tags["run_dir"])
    saved = json.loads((job_dir / "config.json").read_text())
    params = run.data.params
    assert params["dataset.limit"] == "3" and params["tracking.traces"] == "True"
    assert params["runtime.model"] == saved["runtime"]["model"] == "tool-demo"
    assert params["session.tools"] == "[{'_target_': 'pipeline.answering.demo_tools.add'}]"
    assert params["plan.device"] == "cpu" and params["effective.generation.max_new_tokens"] == "64"
    plan = json.loads((job_dir / "plan.json").read_text())
    tags = run.data.tags
    assert tags["weights_digest"] == plan["model"]["weights_digest"] and tags["device"] == "cpu"
    assert tags["config_hash"] == read_transcript(job_dir / "transcript.jsonl")[0]["config_hash"]
    assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run from a git checkout
    assert tags["version.mlflow"].startswith("3.") and tags["version.llm-pipeline"] == "0.1.0"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "plan.json", "transcript.jsonl", "summary.json", "run.log", "status.json"} <= artifacts
    assert run.data.metrics["traces"] == 3 and "traces/seconds" in run.data.metrics


def test_the_dataset_is_a_run_input_shared_by_runs_over_the_same_file(tool_sweep):
    _, _, _, children, _ = tool_sweep
    digests = set()
    for run in children.values():
        (entry,) = run.inputs.dataset_inputs
        dataset = entry.dataset
        assert dataset.name == "tool_addition" and dataset.source_type == "local"
        assert json.loads(dataset.source)["uri"] == str(TOOL_DATASET.resolve())
        assert json.loads(dataset.profile)["samples"] == 3
        assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "eval"
        digests.add(dataset.digest)
    assert digests == {hashlib.sha256(TOOL_DATASET.read_bytes()).hexdigest()[:32]}


def test_each_answer_is_a_trace_with_its_tool_steps_as_timed_child_spans(tool_sweep):
    _, client, _, children, _ = tool_sweep
    run = children["calculator_tools"]
    records = read_transcript(Path(run.data.tags["run_dir"]) / "transcript.jsonl")
    traces = client.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id)
    assert len(traces) == 3
    by_sample = {t.data.spans[0].name: t for t in traces}
    answer = next(r for r in records if r["kind"] == "answer")
    steps = [r for r in records if r["sample_id"] == answer["sample_id"]]
    assert [s["kind"] for s in steps] == ["tool_call", "tool_result", "answer"]  # the model called add
    trace = by_sample[answer["sample_id"]]
    root, *spans = trace.data.spans
    assert root.parent_id is None and root.span_type == "AGENT"
    assert root.inputs["messages"] == steps[0]["messages"]
    assert root.outputs["choices"][0]["message"] == {"role": "assistant", "content": answer["response"]}
    assert root.attributes["score"] == answer["score"] == 1.0
    assert [(s.span_type, s.name) for s in spans] == [("CHAT_MODEL", "generate 0"), ("TOOL", "add"),
                                                      ("CHAT_MODEL", "generate 2")]
    assert all(s.parent_id == root.span_id for s in spans)
    for span, step in zip(spans, steps):
        assert span.start_time_ns == pytest.approx(step["started_at"] * 1e9, abs=1e3)
        seconds = step["latency_s"] if step["kind"] != "tool_result" else step["tool"]["seconds"]
        assert (span.end_time_ns - span.start_time_ns) / 1e9 == pytest.approx(seconds, abs=1e-6)
    call = spans[0]
    assert call.attributes["mlflow.chat.tokenUsage"]["output_tokens"] == steps[0]["completion_tokens"]
    assert call.events[0].name == "first_token"
    assert spans[1].inputs == steps[1]["tool"]["arguments"] and spans[1].outputs == steps[1]["response"]
    assert root.start_time_ns == spans[0].start_time_ns and root.end_time_ns == spans[-1].end_time_ns
    assert trace.info.request_preview.startswith("What is ") and trace.info.response_preview == answer["response"]

    plain = children["default"]  # no tools: the generation is the trace's only span
    (first, *_) = client.search_traces(locations=[plain.info.experiment_id], run_id=plain.info.run_id)
    (only,) = first.data.spans
    assert only.span_type == "CHAT_MODEL" and only.attributes["completion_tokens"] > 0


def test_the_parent_gets_the_comparison_table_and_plots(tool_sweep):
    result, client, parent, children, sweep_dir = tool_sweep
    table = sweep_dir / "comparison" / "comparison.md"
    assert f"compare   {table.relative_to(sweep_dir.parents[3])}" in result.stdout
    uploaded = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/comparison.csv", "comparison/comparison.md", "comparison/plots"} <= uploaded
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison/plots")}
    assert "comparison/plots/accuracy_vs_session.png" in plots
    text = client.download_artifacts(parent.info.run_id, "comparison/comparison.csv", str(sweep_dir / "down"))
    rows = list(csv.DictReader(io.StringIO(Path(text).read_text())))
    accuracy = {row["session"]: float(row["accuracy"]) for row in rows}
    assert accuracy == {name: run.data.metrics["accuracy"] for name, run in children.items()}
