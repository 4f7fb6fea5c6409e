"""The execute stage and the tool loop against the scripted fake backend: no model, no torch, fast.

What the stage sends the backend (requests: messages, tools, settings, seeds, batches) and what it
makes of what comes back (records: tool steps, answers, errors, token counts, timings), checked
without the cost or the chance of a real model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.backends.base import Request
from pipeline.backends.fake import FakeBackend, Reply
from pipeline.core.config import (
    Config,
    ExecuteConfig,
    GenerationConfig,
    SessionConfig,
    ToolBudgetConfig,
)
from pipeline.core.errors import BackendUnavailable, RequestFailure, UserError
from pipeline.core.records import Message, Sample, ToolCall, Turn
from pipeline.core.streaming import sample_seed
from pipeline.core.transcript import TranscriptWriter, read_transcript
from pipeline.stages.execute import execute
from pipeline.stages.score import score_records
from tests.conftest import pipeline_env

ADD = {"_target_": "pipeline.answering.demo_tools.add"}
ROOT = Path(__file__).resolve().parents[2]


def sample(i: int, prompt: str = "", reference: str | None = None) -> Sample:
    return Sample(id=f"s{i}", messages=(Message("user", prompt or f"question {i}"),), reference=reference)


def run(tmp_path: Path, backend: FakeBackend, samples: list[Sample], **sections) -> list[dict]:
    config = Config()
    for name, value in sections.items():
        setattr(config, name, value)
    backend.load()
    path = tmp_path / f"t{len(list(tmp_path.glob('t*.jsonl')))}.jsonl"
    with TranscriptWriter(path) as writer:
        execute(backend, samples, config, writer, config.config_hash())
    written = read_transcript(path)
    assert all(r["score"] is None for r in written)  # execute writes answers only: the score stage scores them
    return score_records(written, config.dataset.scorer)


def calculator(request: Request):
    """Calls add on the two numbers of the question while offered tools, then repeats the result."""
    last = request.messages[-1]
    if last.role == "tool":
        return Reply(last.content)
    if request.tools:
        a, b = (int(n) for n in last.content.split()[-1].rstrip("?").split("+"))
        return Reply("let me add", tool_calls=[ToolCall("add", {"a": a, "b": b})])
    return Reply("no tools, no idea")


def test_each_answer_comes_from_the_backend_with_its_counts_and_timings(tmp_path):
    backend = FakeBackend(["the first", "the second answer", "third"], batch_size=2, seconds_per_token=0.001)
    samples = [sample(0, "one two three four"), sample(1, "a b"), sample(2, "x")]
    records = run(tmp_path, backend, samples)
    assert sorted(r["sample_id"] for r in records) == ["s0", "s1", "s2"]
    # batches of the backend's size, longest prompt first: s0 (4 words) and s1 (2) together, then s2
    assert [[r.messages[-1].content for r in batch] for batch in backend.batches] == \
        [["one two three four", "a b"], ["x"]]
    by_id = {r["sample_id"]: r for r in records}
    assert by_id["s0"]["response"] == "the first" and by_id["s0"]["completion_tokens"] == 2
    assert by_id["s0"]["prompt_tokens"] == 4 and by_id["s2"]["prompt_tokens"] == 1
    assert all(0 < r["ttft_s"] <= r["latency_s"] and r["finish_reason"] == "stop" for r in records)
    assert [by_id[f"s{i}"]["batch"] for i in range(3)] == [0, 0, 1]


def test_requests_carry_the_runs_settings_and_each_answer_its_own_seed(tmp_path):
    backend = FakeBackend()
    generation = GenerationConfig(temperature=0.7, top_p=0.9, max_new_tokens=5, num_samples=2, seed=11, stop=["."])
    run(tmp_path, backend, [sample(0), sample(1)], generation=generation)
    requests = [r for batch in backend.batches for r in batch]
    assert len(requests) == 4
    assert {(r.temperature, r.top_p, r.max_new_tokens, tuple(r.stop)) for r in requests} == {(0.7, 0.9, 5, (".",))}
    # a backend not built from a plan gets the config's nulls as nulls: its own defaults apply, not transformers'
    assert {(r.top_k, r.min_p, r.repetition_penalty) for r in requests} == {(None, None, None)}
    expected = {sample_seed(11, f"s{i}", k) for i in range(2) for k in range(2)}
    assert {r.seed for r in requests} == expected and len(expected) == 4
    greedy = FakeBackend()
    run(tmp_path, greedy, [sample(0)])
    assert greedy.batches[0][0].seed is None and greedy.batches[0][0].temperature == 0.0


def test_a_tool_round_trip_records_the_call_the_result_and_the_answer(tmp_path):
    backend = FakeBackend(calculator)
    records = run(tmp_path, backend, [sample(0, "What is 4821+3907?", "8728")], session=SessionConfig(tools=[ADD]))
    assert [r["kind"] for r in records] == ["tool_call", "tool_result", "answer"]
    call, result, final = records
    assert call["tool"] == {"calls": [{"name": "add", "arguments": {"a": 4821, "b": 3907}}]}
    assert call["finish_reason"] == "stop"  # the model ran and stopped; "tool" in a transcript means no model ran
    assert result["response"] == "8728" and result["finish_reason"] == "tool"
    assert final["response"] == "8728" and final["score"] == 1.0
    first, second = (batch[0] for batch in backend.batches)
    assert [t["function"]["name"] for t in first.tools] == ["add"]
    # the second generation sees the call (as a tool call, its text without markup) and the tool's answer
    called = (ToolCall("add", {"a": 4821, "b": 3907}),)
    assert second.messages[-2] == Message("assistant", "let me add", tool_calls=called)
    assert second.messages[-1] == Message("tool", "8728", name="add")


def test_when_the_round_trips_are_spent_the_model_is_asked_without_tools(tmp_path):
    always = FakeBackend(lambda r: Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 2})]) if r.tools else "done")
    session = SessionConfig(tools=[ADD], tool_budget=ToolBudgetConfig(max_round_trips=2))
    records = run(tmp_path, always, [sample(0)], session=session)
    assert [r["kind"] for r in records] == ["tool_call", "tool_result"] * 2 + ["answer"]
    assert records[-1]["response"] == "done" and records[-1]["tool_budget_spent"] == "round_trips"
    assert [bool(batch[0].tools) for batch in always.batches] == [True, True, False]


def test_unreadable_and_unknown_calls_become_tool_errors_the_model_is_told_about(tmp_path):
    def confused(request: Request):
        if request.messages[-1].role != "tool":
            return Reply("hm", tool_calls=[ToolCall("subtract", {"a": 1})])
        return "sorry"

    records = run(tmp_path, FakeBackend(confused), [sample(0)], session=SessionConfig(tools=[ADD]))
    assert [r["kind"] for r in records] == ["tool_call", "tool_error", "answer"]
    assert "unknown tool 'subtract'" in records[1]["error"]


def test_a_failed_request_is_an_error_record_and_the_run_goes_on(tmp_path):
    backend = FakeBackend(["fine", Reply(error="the server said 500"), "also fine"], batch_size=1)
    records = run(tmp_path, backend, [sample(0, "aaa"), sample(1, "bb", "x"), sample(2, "c")])
    by_id = {r["sample_id"]: r for r in records}
    failed = by_id["s1"]
    assert failed["status"] == "error" and failed["finish_reason"] == "error" and failed["score"] == 0.0
    assert "the fake backend could not answer: the server said 500" in failed["error"] and "s1" in failed["error"]
    assert [by_id["s0"]["response"], by_id["s2"]["response"]] == ["fine", "also fine"]


def test_with_fail_fast_a_failed_request_stops_the_run_and_keeps_what_came_before(tmp_path):
    backend = FakeBackend(["fine", Reply(error="the server said 500"), "never asked"], batch_size=1)
    path = tmp_path / "t.jsonl"
    config = Config(execute=ExecuteConfig(fail_fast=True))
    backend.load()
    with pytest.raises(RequestFailure, match="the server said 500"):
        with TranscriptWriter(path) as writer:
            execute(backend, [sample(0, "aaa"), sample(1, "bb"), sample(2, "c")], config, writer, config.config_hash())
    assert [r["response"] for r in read_transcript(path)] == ["fine"]
    assert len(backend.batches) == 2


def test_a_backend_that_is_gone_stops_the_run_keeping_its_batch_answers_and_writing_no_error_record(tmp_path):
    # unlike a request's own failure (above), this one says nothing about the request: every one after it would
    # fail the same way, so the run stops, fail_fast or not, and the unanswered requests are left for a resume
    gone = Reply(error="the server at http://h/v1 stopped answering: refused", unavailable=True)
    backend = FakeBackend(["fine", "also fine", "third", gone, "never asked", "never asked"], batch_size=2)
    path = tmp_path / "t.jsonl"
    config = Config()
    backend.load()
    with pytest.raises(BackendUnavailable, match=r"^the server at http://h/v1 stopped answering: refused \(1 "):
        with TranscriptWriter(path) as writer:
            execute(backend, [sample(i, "x" * (9 - i)) for i in range(6)], config, writer, config.config_hash())
    records = read_transcript(path)
    assert [(r["sample_id"], r["status"]) for r in records] == [("s0", "ok"), ("s1", "ok"), ("s2", "ok")]
    assert len(backend.batches) == 2  # nothing was sent after the batch that found the backend gone


def test_a_prompt_over_the_backends_context_is_refused_before_it_is_sent(tmp_path):
    backend = FakeBackend(context_length=10)
    records = run(tmp_path, backend, [sample(0, "short"), sample(1, "one two three four five six")],
                  generation=GenerationConfig(max_new_tokens=5))
    by_id = {r["sample_id"]: r for r in records}
    assert by_id["s0"]["status"] == "ok"
    assert by_id["s1"]["status"] == "error" and "does not fit the model's context of 10 tokens" in by_id["s1"]["error"]
    assert [r.messages[-1].content for batch in backend.batches for r in batch] == ["short"]
    with pytest.raises(UserError, match="execute.fail_fast"):
        run(tmp_path, FakeBackend(context_length=10), [sample(1, "one two three four five six")],
            generation=GenerationConfig(max_new_tokens=5), execute=ExecuteConfig(fail_fast=True))


def test_a_scripted_conversation_sends_each_turn_after_its_history(tmp_path):
    talk = Sample(id="c", messages=(), turns=(Turn("hello"), Turn("and again")))
    backend = FakeBackend()
    records = run(tmp_path, backend, [talk])
    assert [r["sample_id"] for r in records] == ["c#0", "c#1"]
    second = backend.batches[1][0]
    assert [(m.role, m.content) for m in second.messages] == [
        ("user", "hello"), ("assistant", "you said: hello"), ("user", "and again")]


def test_nothing_above_the_backends_imports_torch():
    modules = ["pipeline.run.runner", "pipeline.stages.execute", "pipeline.answering.loop", "pipeline.client",
               "pipeline.backends.transformers.backend", "pipeline.backends.fake"]
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=pipeline_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
