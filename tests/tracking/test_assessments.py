"""Each trace's assessments (the scorer's Feedback, the reference as an Expectation), read back from a
real SQLite store with MlflowClient: both ways of writing them, retries, and resumes that write nothing twice."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pipeline.core.config import DatasetConfig, ScorerConfig, TrackingConfig
from pipeline.core.records import TranscriptRecord
from pipeline.core.transcript import read_transcript
from pipeline.tracking import assessments
from pipeline.tracking.assessments import EXPECTATION, SOURCE_RUN_ID, answer_assessments
from pipeline.tracking.runs import EVALUATION_RUN, RUN_TYPE, Tracker
from pipeline.tracking.traces import group_answers, trace_id
from tests.conftest import mlflow_client, run_pipeline


def record(sample_id: str, score, reference="5", response="The answer is 5", **fields) -> dict:
    values = dict(sample_id=sample_id, sample_index=0, messages=[{"role": "user", "content": "What is 2+3?"}],
                  response=response, reference=reference, score=score, prompt_tokens=10, completion_tokens=2,
                  finish_reason="stop", ttft_s=0.01, latency_s=0.05, batch=0, config_hash="abc",
                  started_at=1_800_000_000.0)
    values.update(fields)
    return TranscriptRecord(**values).to_dict()


RECORDS = [record("right", 1.0), record("wrong", 0.0, response="six"), record("unscored", None, reference=None)]


def test_a_scored_answer_gets_feedback_from_its_scorer_and_its_reference_as_an_expectation():
    extracted = {**record("a", 0.0), "extracted": "6"}  # what a scorer that extracts (regex, numeric) saw
    feedback, expectation = answer_assessments("run1", [extracted], "numeric", "addition")
    assert (feedback.name, feedback.value, feedback.rationale) == ("numeric", 0.0, "6")
    assert (feedback.source.source_type, feedback.source.source_id) == ("CODE", "numeric")
    assert (expectation.name, expectation.value, expectation.source.source_id) == (EXPECTATION, "5", "addition")
    assert feedback.metadata[SOURCE_RUN_ID] == expectation.metadata[SOURCE_RUN_ID] == "run1"
    assert feedback.trace_id == expectation.trace_id == trace_id("run1", [record("a", 0.0)])
    (plain, _) = answer_assessments("run1", [record("a", 1.0)], "exact_match", "d")
    assert plain.rationale == "The answer is 5"  # without an extracted answer, the response the scorer saw
    assert answer_assessments("run1", [record("a", None, reference=None)], "exact_match", "d") == []


def test_assessment_ids_are_the_same_for_the_same_assessment_and_differ_when_the_value_does():
    first, again, changed = (answer_assessments("run1", [record("a", score)], "m", "d")[0] for score in (1.0, 1.0, 0.0))
    assert first.assessment_id == again.assessment_id != changed.assessment_id
    assert first.assessment_id.startswith("a-") and len(first.assessment_id) == 34


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def tracker(store_uri, tmp_path):
    tracker = Tracker(TrackingConfig(uri=store_uri))
    tracker.start(run_name="r", tags={})
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "right", "prompt": "What is 2+3?", "reference": "5"}\n')
    tracker.log_dataset(DatasetConfig(name="addition", path=str(data), scorer=ScorerConfig(name="exact_match")), 3)
    return tracker


def held(tracker) -> dict[str, list]:
    """sample id -> the valid assessments of its trace, as MLflow returns them."""
    traces = tracker.client.search_traces(locations=[tracker.experiment_id], run_id=tracker.run_id,
                                          include_spans=False)
    names = {trace_id(tracker.run_id, steps): steps[0]["sample_id"] for steps in group_answers(RECORDS)}
    return {names[t.info.trace_id]: sorted((a for a in t.info.assessments if a.valid is not False),
                                           key=lambda a: a.name) for t in traces}


def check(tracker, scores=(1.0, 0.0)) -> None:
    found = held(tracker)
    for sample, score, response in (("right", scores[0], "The answer is 5"), ("wrong", scores[1], "six")):
        feedback, expectation = found[sample]
        assert (feedback.name, feedback.feedback.value, feedback.rationale) == ("exact_match", score, response)
        assert (feedback.source.source_type, feedback.source.source_id) == ("CODE", "exact_match")
        assert (expectation.name, expectation.expectation.value) == (EXPECTATION, "5")
    assert found["unscored"] == []


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("way", ["sql", "public call"])
def test_each_trace_holds_its_assessments_and_a_second_logging_writes_none_again(tmp_path, tracker, way,
                                                                                 monkeypatch):
    if way == "public call":
        monkeypatch.setattr(assessments, "_insert_sql", lambda store, todo: False)
    transcript = write(tmp_path / "transcript.jsonl", RECORDS)
    tracker.log_traces(transcript)  # traces, then their assessments
    check(tracker)
    tracker.log_traces(transcript)  # a resumed run logs its transcript again
    check(tracker)
    assert tracker.client.get_run(tracker.run_id).data.metrics["assessments"] == 4
    written = assessments.log_assessments(tracker.uri, tracker.experiment_id, tracker.run_id, RECORDS,
                                          "exact_match", "addition")
    assert (written.written, written.kept) == (0, 4)


def test_the_run_gets_the_scorers_mean_and_is_an_evaluation_run(tmp_path, store_uri):
    tracker = Tracker(TrackingConfig(uri=store_uri))
    tracker.start(run_name="r", tags={RUN_TYPE: EVALUATION_RUN})
    data = write(tmp_path / "data.jsonl", [{"id": "x", "prompt": "p"}])
    tracker.log_dataset(DatasetConfig(name="addition", path=str(data), scorer=ScorerConfig(name="exact_match")), 3)
    tracker.log_traces(write(tmp_path / "transcript.jsonl", RECORDS))
    (metric,) = tracker.client.get_metric_history(tracker.run_id, "exact_match/mean")
    assert metric.value == 0.5  # of the two scored answers
    assert tracker.client.get_run(tracker.run_id).data.tags[RUN_TYPE] == EVALUATION_RUN


def test_a_changed_score_replaces_the_earlier_feedback(tmp_path, tracker):
    tracker.log_traces(write(tmp_path / "transcript.jsonl", RECORDS))
    rescored = [record("right", 0.0), *RECORDS[1:]]
    tracker.log_traces(write(tmp_path / "transcript.jsonl", rescored))
    check(tracker, scores=(0.0, 0.0))
    everything = tracker.client.get_trace(trace_id(tracker.run_id, [RECORDS[0]])).info.assessments
    assert sorted((a.feedback.value, a.valid) for a in everything if a.feedback) == [(0.0, True), (1.0, False)]


def test_a_busy_store_is_tried_again_and_a_write_whose_answer_was_lost_is_not_repeated(tmp_path, tracker,
                                                                                       monkeypatch):
    from mlflow.tracing.client import TracingClient

    monkeypatch.setattr(assessments, "_insert_sql", lambda store, todo: False)
    monkeypatch.setattr(assessments.time, "sleep", lambda seconds: None)
    real = TracingClient.log_assessment
    calls = []

    def flaky(self, trace, assessment):
        calls.append(assessment.assessment_id)
        first = calls.count(assessment.assessment_id) == 1
        if first and assessment.feedback is not None:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        result = real(self, trace, assessment)
        if first:  # an expectation: written, but the caller cannot know
            raise ConnectionError("the answer was lost on its way back")
        return result

    monkeypatch.setattr(TracingClient, "log_assessment", flaky)
    tracker.log_traces(write(tmp_path / "transcript.jsonl", RECORDS))
    check(tracker)  # one of each, whatever failed on the way
    assert len(calls) > 4
    assert tracker.client.get_run(tracker.run_id).data.metrics["assessments"] == 4  # and it ended well


def test_a_store_that_keeps_failing_stops_the_rest_and_leaves_the_run_going(tmp_path, tracker, monkeypatch, caplog):
    from mlflow.tracing.client import TracingClient

    monkeypatch.setattr(assessments, "_insert_sql", lambda store, todo: False)
    monkeypatch.setattr(assessments.time, "sleep", lambda seconds: None)
    calls = []

    def broken(self, trace, assessment):
        calls.append(1)
        threading.Event().wait(0.05)  # a store that takes a moment to refuse
        raise ValueError("the store refused it")

    monkeypatch.setattr(TracingClient, "log_assessment", broken)
    many = [record(f"s{i}", 1.0) for i in range(30)]  # 60 assessments, far more than the workers
    tracker.log_traces(write(tmp_path / "transcript.jsonl", many))
    assert "assessments not logged to MLflow: ValueError: the store refused it" in caplog.text
    assert len(calls) <= 2 * assessments.WORKERS  # not retried (no passing trouble); what was queued is dropped
    assert "assessments" not in tracker.client.get_run(tracker.run_id).data.metrics


@pytest.mark.slow
def test_a_run_is_an_evaluation_run_whose_traces_hold_their_assessments_and_a_resume_adds_none(tmp_path):
    result = run_pipeline(["dataset.limit=3", "hydra.run.dir=runs/r"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "r"
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("pipeline")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags[RUN_TYPE] == EVALUATION_RUN
    assert run.data.metrics["exact_match/mean"] == run.data.metrics["accuracy"]
    (dataset_input,) = run.inputs.dataset_inputs
    answers = {r["sample_id"]: r for r in read_transcript(run_dir / "transcript.jsonl")}

    def assessed() -> dict[str, list]:
        traces = client.search_traces(locations=[experiment.experiment_id], run_id=run.info.run_id,
                                      include_spans=False)
        return {t.info.trace_id: sorted(t.info.assessments, key=lambda a: a.name) for t in traces}

    first = assessed()
    assert len(first) == len(answers) == 3
    for answer in answers.values():
        feedback, expectation = first[trace_id(run.info.run_id, [answer])]
        assert (feedback.name, feedback.feedback.value, feedback.rationale) == (
            "exact_match", answer["score"], answer["response"])
        assert feedback.source.source_type == "CODE" and feedback.run_id == run.info.run_id
        assert (expectation.name, expectation.expectation.value) == (EXPECTATION, answer["reference"])
        assert expectation.source.source_id == dataset_input.dataset.name

    # a run whose results were complete but whose upload failed at the end is resumed into the same MLflow run
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "failed"}))
    resumed = run_pipeline([f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run.info.run_id]
    again = assessed()
    assert {t: [a.assessment_id for a in found] for t, found in again.items()} == \
        {t: [a.assessment_id for a in found] for t, found in first.items()}


@pytest.mark.slow
def test_a_rescore_is_an_evaluation_run_too_alone_and_as_a_sweep(tmp_path):
    """pipeline.from_transcript, once and as a sweep over scorers: each MLflow run's traces hold their new
    scorer's Feedback and the reference as an Expectation, as a run that generated its answers does."""
    source = tmp_path / "runs" / "source"
    result = run_pipeline(["dataset.limit=3", f"hydra.run.dir={source}", "tracking=none"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answers = {r["sample_id"]: r for r in read_transcript(source / "transcript.jsonl")}
    for args in (["dataset.scorer.name=contains", "hydra.run.dir=runs/again"],
                 ["-m", "dataset.scorer.name=numeric,exact_match", "hydra.sweep.dir=runs/sweep"]):
        result = run_pipeline([*args, f"pipeline.from_transcript={source}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("pipeline")
    rescores = [run for run in client.search_runs([experiment.experiment_id])
                if run.data.tags.get("run_type") == "rescore"]
    assert sorted(run.data.params["dataset.scorer.name"] for run in rescores) == ["contains", "exact_match", "numeric"]
    for run in rescores:
        scorer = run.data.params["dataset.scorer.name"]
        assert run.data.tags[RUN_TYPE] == EVALUATION_RUN and run.data.metrics["assessments"] == 2 * len(answers)
        traces = client.search_traces(locations=[experiment.experiment_id], run_id=run.info.run_id, include_spans=False)
        scored = {trace_id(run.info.run_id, [r]): r
                  for r in read_transcript(Path(run.data.tags["run_dir"]) / "transcript.jsonl")}
        assert len(traces) == len(scored) == len(answers)
        for trace in traces:
            (feedback,), (expectation,) = ([a for a in trace.info.assessments if (a.feedback is None) == is_expectation]
                                           for is_expectation in (False, True))
            answer = scored[trace.info.trace_id]
            assert (feedback.name, feedback.feedback.value) == (scorer, answer["score"])
            assert (expectation.name, expectation.expectation.value) == (EXPECTATION, answer["reference"])
            assert expectation.source.source_id == "addition"  # the source run's dataset
