"""Traces from transcript records, and the tracker's MLflow limits, checked against a real SQLite store."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from pipeline.core.config import DatasetConfig, TrackingConfig
from pipeline.core.records import TranscriptRecord
from pipeline.tracking.runs import (
    MAX_KEY_LENGTH,
    MAX_TAG_LENGTH,
    Tracker,
    mlflow_key,
    params_for_mlflow,
)
from pipeline.tracking.traces import answer_spans, group_answers, trace_id

START = 1_800_000_000.0
START_NS = 1_800_000_000 * 10**9


def record(sample_id: str, kind: str = "answer", step: int = 0, **fields) -> dict:
    values = dict(sample_id=sample_id, sample_index=0, messages=[{"role": "user", "content": "What is 2+3?"}],
                  response="5", reference="5", score=1.0, prompt_tokens=10, completion_tokens=2,
                  finish_reason="stop", ttft_s=0.01, latency_s=0.05, batch=0, config_hash="abc", kind=kind,
                  step=step, started_at=START)
    values.update(fields)
    return TranscriptRecord(**values).to_dict()


def tool_answer(sample_id: str = "t1", ok: bool = True) -> list[dict]:
    return [
        record(sample_id, "tool_call", 0, response='<tool_call>{"name": "add"}', score=None, latency_s=0.2),
        record(sample_id, "tool_result" if ok else "tool_error", 1, messages=[], finish_reason="tool",
               response="5" if ok else "boom", status="ok" if ok else "error", error=None if ok else "boom",
               started_at=START + 0.21, latency_s=0.0, prompt_tokens=0, completion_tokens=0,
               tool={"name": "add", "arguments": {"a": 2, "b": 3, "api_key": "sk-SECRET"}, "seconds": 0.004}),
        record(sample_id, "answer", 2, started_at=START + 0.22, latency_s=0.1),
    ]


def test_one_group_per_answer_in_transcript_order():
    records = [record("a"), *tool_answer("b"), record("c", sample_index=1), record("c")]
    groups = group_answers(records)
    assert [[r["step"] for r in g] for g in groups] == [[0], [0, 1, 2], [0], [0]]
    assert [(g[0]["sample_id"], g[0]["sample_index"]) for g in groups] == [("a", 0), ("b", 0), ("c", 1), ("c", 0)]


def test_a_plain_answer_is_one_timed_span_and_ids_are_stable():
    (root,) = answer_spans("run1", [record("a")], fallback_start=0.0)
    assert root["start_time_unix_nano"] == START_NS and root["end_time_unix_nano"] == START_NS + 50_000_000
    attributes = {k: json.loads(v) for k, v in root["attributes"].items()}
    assert attributes["mlflow.spanType"] == "CHAT_MODEL" and attributes["score"] == 1.0
    assert attributes["mlflow.chat.tokenUsage"] == {"input_tokens": 10, "output_tokens": 2, "total_tokens": 12}
    assert root["events"][0]["time_unix_nano"] == START_NS + 10_000_000
    assert trace_id("run1", [record("a")]) == trace_id("run1", [record("a")]) != trace_id("run2", [record("a")])


def test_tool_steps_become_child_spans_and_a_failed_call_is_an_error_with_its_secret_masked():
    root, generate, tool, final = answer_spans("run1", tool_answer(ok=False), fallback_start=0.0)
    assert [s["parent_span_id"] for s in (generate, tool, final)] == [root["span_id"]] * 3
    assert json.loads(tool["attributes"]["mlflow.spanType"]) == "TOOL" and tool["name"] == "add"
    assert tool["status"]["code"] == "STATUS_CODE_ERROR" and tool["status"]["message"] == "boom"
    assert tool["end_time_unix_nano"] - tool["start_time_unix_nano"] == 4_000_000
    assert json.loads(tool["attributes"]["mlflow.spanInputs"]) == {"a": 2, "b": 3, "api_key": "***"}
    assert root["start_time_unix_nano"] == generate["start_time_unix_nano"]
    assert root["end_time_unix_nano"] == final["end_time_unix_nano"]
    assert (root["end_time_unix_nano"] - START_NS) / 1e9 == pytest.approx(0.32)
    assert json.loads(root["attributes"]["tool_calls"]) == 1


def test_records_without_started_at_fall_back_to_the_given_time():
    (root,) = answer_spans("run1", [record("old", started_at=None)], fallback_start=5.0)
    assert root["start_time_unix_nano"] == 5_000_000_000


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the module: creating one costs seconds (MLflow's schema migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def tracker(store_uri):
    tracker = Tracker(TrackingConfig(uri=store_uri))
    tracker.start(run_name="r", tags={})
    return tracker


def write_transcript(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_traces_logged_twice_are_updated_not_repeated_and_can_be_switched_off(tmp_path, tracker):
    records = [record(f"s{i}") for i in range(3)] + tool_answer("t")
    transcript = write_transcript(tmp_path / "transcript.jsonl", records)
    tracker.log_traces(transcript)
    tracker.log_traces(transcript)  # a resumed run logs its transcript again
    traces = tracker.client.search_traces(locations=[tracker.experiment_id], run_id=tracker.run_id)
    assert len(traces) == 4
    assert sorted(len(t.data.spans) for t in traces) == [1, 1, 1, 4]

    off = Tracker(TrackingConfig(uri=tracker.uri, traces=False))
    off.start(run_name="no traces", tags={})
    off.log_traces(transcript)
    assert off.client.search_traces(locations=[off.experiment_id], run_id=off.run_id) == []


def test_trace_sample_traces_the_same_answers_in_every_run_with_their_assessments(tmp_path, store_uri):
    records = [record(f"s{i}") for i in range(8)] + tool_answer("t")  # nine answers, one with tool steps
    transcript = write_transcript(tmp_path / "transcript.jsonl", records)
    traced = []
    for name in ("first", "second"):
        tracker = Tracker(TrackingConfig(uri=store_uri, trace_sample=3))
        tracker.start(run_name=name, tags={})
        tracker.log_dataset(DatasetConfig(name="sums", path=str(transcript)), 9)
        tracker.log_traces(transcript)
        traces = tracker.client.search_traces(locations=[tracker.experiment_id], run_id=tracker.run_id)
        traced.append(sorted(next(s.name for s in t.data.spans if s.parent_id is None) for t in traces))
        metrics = tracker.client.get_run(tracker.run_id).data.metrics
        assert len(traces) == metrics["traces"] == 3
        assert metrics["assessments"] == 2 * 3  # a feedback and an expectation for each traced answer, no more
        assert metrics["exact_match/mean"] == 1.0  # the mean is over all nine answers
    assert traced[0] == traced[1]  # chosen by sample id: the same answers in both runs


def test_awkward_param_names_and_values_are_accepted_by_mlflow(tracker):
    long_key = "runtime.aliases." + "m" * 300
    params = {long_key: "x", long_key + "2": "y", "runtime.aliases.my@model": "a", "runtime.aliases.my_model": "b",
              "odd/../name": 1, "session.system_prompt": "p" * 7000, "runtime.hf_token": "hf_SECRET"}
    tracker.log_params(params)
    logged = tracker.client.get_run(tracker.run_id).data.params
    assert len(logged) == len(params) and all(len(key) <= MAX_KEY_LENGTH for key in logged)
    assert {logged["runtime.aliases.my_model"], logged[mlflow_key("runtime.aliases.my@model") + "-" +
            hashlib.sha256(b"runtime.aliases.my_model").hexdigest()[:8]]} == {"a", "b"}
    assert logged["runtime.hf_token"] == "***" and len(logged["session.system_prompt"]) == 6000
    assert params_for_mlflow({"odd/../name": 1}) == {"odd/_/name": "1"}


def test_a_resumed_run_keeps_its_params_and_says_which_changed(tracker, caplog):
    tracker.log_params({"generation.seed": 1, "dataset.limit": 5})
    with caplog.at_level(logging.WARNING):
        tracker.log_params({"generation.seed": 2, "dataset.limit": 5, "generation.top_p": 0.9})
    logged = tracker.client.get_run(tracker.run_id).data.params
    assert logged == {"generation.seed": "1", "dataset.limit": "5", "generation.top_p": "0.9"}
    assert "generation.seed" in caplog.text and "dataset.limit" not in caplog.text


def test_long_tags_are_cut_to_mlflow_limit(store_uri):
    tracker = Tracker(TrackingConfig(uri=store_uri))
    tracker.start(run_name="r", tags={"overrides": "session.system_prompt=" + "x" * 9000, "bad:name?": "1"})
    tags = tracker.client.get_run(tracker.run_id).data.tags
    assert len(tags["overrides"]) == MAX_TAG_LENGTH and tags["bad:name_"] == "1"


def test_the_dataset_input_is_named_and_digested_by_content(tmp_path, tracker):
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": 1, "prompt": "hi"}\n')
    tracker.log_dataset(DatasetConfig(name="mine", path=str(data), limit=1), samples=1)
    (entry,) = tracker.client.get_run(tracker.run_id).inputs.dataset_inputs
    assert entry.dataset.name == "mine" and entry.dataset.digest == hashlib.sha256(data.read_bytes()).hexdigest()[:32]
    assert json.loads(entry.dataset.source) == {"uri": str(data)}


def test_a_trace_shows_each_image_as_a_thumbnail_beside_its_path_and_sha256(tmp_path, tracker):
    """The chat view's image_url parts hold the image (small ones as they are, large ones cut to a
    thumbnail); a file changed since the run is not shown in its new state; audio keeps its description."""
    import base64
    import io

    from PIL import Image

    from pipeline.data.media import describe, user_parts
    from pipeline.tracking.trace_images import MAX_BYTES, THUMBNAIL_SIDE
    from tests.conftest import ASSETS_DIR
    from tests.helpers.tiny_media_models import wav

    digit = tmp_path / "digit.png"
    digit.write_bytes((ASSETS_DIR / "datasets" / "vision_digits" / "digits-000.png").read_bytes())
    Image.open(digit).resize((600, 600)).save(tmp_path / "large.png")
    Image.open(digit).save(tmp_path / "changed.png")
    parts = user_parts([str(digit), str(tmp_path / "large.png"), str(tmp_path / "changed.png")],
                       [str(wav(tmp_path / "tone.wav", 440))])
    (tmp_path / "changed.png").write_bytes((ASSETS_DIR / "datasets" / "vision_digits" / "digits-001.png").read_bytes())
    media = [describe(part) for part in parts]
    messages = [{"role": "user", "content": "What number is this?", "media": media}]
    tracker.log_traces(write_transcript(tmp_path / "transcript.jsonl", [record("pic", messages=messages)]))

    (trace,) = tracker.client.search_traces(locations=[tracker.experiment_id], run_id=tracker.run_id,
                                            filter_string="trace.name = 'pic'")
    (message,) = trace.data.spans[0].inputs["messages"]
    assert message["media"] == media  # path and sha256 of every part, as the transcript keeps them
    *pictures, text = message["content"]
    assert text == {"type": "text", "text": "What number is this?"} and len(pictures) == 2  # not the changed file
    shown = []
    for picture in pictures:
        header, data = picture["image_url"]["url"].split(",", 1)
        assert header == "data:image/png;base64" and len(base64.b64decode(data)) <= MAX_BYTES
        shown.append(Image.open(io.BytesIO(base64.b64decode(data))))
    assert shown[0].size == (32, 32) and shown[0].convert("L").tobytes() == Image.open(digit).tobytes()
    assert shown[1].size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    assert shown[1].convert("L").resize((32, 32)).tobytes() != Image.new("L", (32, 32), 255).tobytes()
