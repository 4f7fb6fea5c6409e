"""The tool loop on a real model: the tool demo model (pipeline/assets/tool_model) calls `add`.

Generate -> parse -> run tools -> feed back -> generate, with round-trip and time budgets, tool
errors the model is told about, unparsable calls, skip_summarization, tools inside scripted
conversations, and the plan's refusals before any weight loads."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pipeline.backends.transformers.load import load
from tests.helpers.planning import plan_in_process
from pipeline.core.config import (
    ASSETS_DIR,
    ExecuteConfig,
    GenerationConfig,
    SessionConfig,
    ToolBudgetConfig,
)
from pipeline.core.errors import ToolFailure, UserError
from pipeline.core.transcript import TranscriptWriter, read_transcript
from pipeline.data.prompts import read_history
from pipeline.stages.execute import execute
from pipeline.stages.resolve import resolve
from pipeline.stages.score import score_records
from tests.conftest import in_process, make_config, write_jsonl

TOOL_MODEL = ASSETS_DIR / "tool_model"
ADD = {"_target_": "pipeline.answering.demo_tools.add"}
CALLS = []  # what the test tools were called with


class Slow:
    """An `add` (the name the tool model calls) that takes its time."""

    @staticmethod
    def add(a: int, b: int) -> int:
        """Add two integers, slowly.

        Args:
            a: The first number.
            b: The second number.
        """
        time.sleep(3)
        return a + b


class Gated:
    """An `add` that returns only once the test opens GATE (or after a minute): a loop that waited
    for it would still be waiting when the run should have ended."""

    GATE = threading.Event()
    RETURNED: list[tuple[int, int]] = []

    @staticmethod
    def add(a: int, b: int) -> int:
        """Add two integers, when allowed to.

        Args:
            a: The first number.
            b: The second number.
        """
        Gated.GATE.wait(timeout=60)
        Gated.RETURNED.append((a, b))
        return a + b


class Broken:
    """An `add` that always raises."""

    @staticmethod
    def add(a: int, b: int) -> int:
        """Add two integers, or fail trying.

        Args:
            a: The first number.
            b: The second number.
        """
        CALLS.append((a, b))
        raise RuntimeError("the adding machine is broken")


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a * b


@pytest.fixture
def questions(tmp_path):
    return write_jsonl(tmp_path / "q.jsonl", [
        {"id": "q0", "prompt": "What is 4821+3907?", "reference": "8728"},
        {"id": "q1", "prompt": "What is 1234+5678?", "reference": "6912"},
        {"id": "q2", "prompt": "What is 9000+1001?", "reference": "10001"},
    ])


def run(tmp_path, dataset, tools=(ADD,), max_new_tokens=64, **session) -> list[dict]:
    config = make_config(TOOL_MODEL, dataset, session=SessionConfig(tools=[dict(t) for t in tools], **session),
                         generation=GenerationConfig(max_new_tokens=max_new_tokens))
    plan, samples, template = plan_in_process(config)
    runtime = load(plan, template)
    path = tmp_path / f"t{len(list(tmp_path.glob('t*.jsonl')))}.jsonl"
    with TranscriptWriter(path) as writer:
        execute(in_process(runtime, config), samples, config, writer, config.config_hash())
    return score_records(read_transcript(path), config.dataset.scorer)  # as the score stage does next


def steps(records: list[dict], sample_id: str) -> list[dict]:
    return sorted((r for r in records if r["sample_id"] == sample_id), key=lambda r: r["step"])


def test_the_model_calls_the_tool_reads_the_result_and_answers(tmp_path, questions):
    records = run(tmp_path, questions)
    for sample_id, total in (("q0", "8728"), ("q1", "6912"), ("q2", "10001")):
        call, result, final = steps(records, sample_id)
        assert (call["kind"], result["kind"], final["kind"]) == ("tool_call", "tool_result", "answer")
        assert call["tools"] == ["add"] and call["completion_tokens"] > 0 and call["score"] is None
        assert result["tool"]["name"] == "add" and result["response"] == total and result["messages"] == []
        assert final["response"] == total and final["score"] == 1.0 and final["tool_budget_spent"] is None
        assert final["messages"][-2:] == [
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": result["tool"]["arguments"]}}]},
            {"role": "tool", "content": total, "name": "add"}]
        assert final["prompt_tokens"] > call["prompt_tokens"]


def test_without_tools_the_same_model_answers_from_its_weights(tmp_path, questions):
    records = run(tmp_path, questions, tools=())
    assert [r["kind"] for r in records] == ["answer"] * 3 and all(r["tools"] == [] for r in records)
    assert all(r["response"].isdigit() for r in records)


def test_when_the_round_trips_run_out_the_last_call_offers_no_tools(tmp_path, questions):
    records = run(tmp_path, questions, tool_budget=ToolBudgetConfig(max_round_trips=1))
    call, result, final = steps(records, "q0")
    assert call["tools"] == ["add"] and result["kind"] == "tool_result"
    assert final["kind"] == "answer" and final["tools"] == [] and final["tool_budget_spent"] == "round_trips"


def test_a_tool_past_its_time_is_a_tool_error_and_the_run_goes_on(tmp_path, questions):
    Gated.GATE.clear()
    Gated.RETURNED.clear()
    try:
        records = run(tmp_path, questions, tools=[{"_target_": "tests.answering.test_tool_loop.Gated.add"}],
                      tool_budget=ToolBudgetConfig(max_round_trips=1, seconds_per_turn=30, seconds_per_call=0.1))
        assert Gated.RETURNED == []  # the run ended while every call was still running: none was waited for
    finally:
        Gated.GATE.set()  # the abandoned calls return now
    call, late = steps(records, "q0")[:2]
    assert late["kind"] == "tool_error" and late["error"] == "add did not finish within 0.1 s"
    assert late["tool"]["arguments"] == call["tool"]["calls"][0]["arguments"] and late["tool"]["seconds"] < 1
    finals = [r for r in records if r["kind"] == "answer"]
    assert len(finals) == 3 and all(r["status"] == "ok" for r in finals)


def test_the_turn_budget_in_seconds_ends_tool_use(tmp_path, questions):
    records = run(tmp_path, questions, tools=[{"_target_": "tests.answering.test_tool_loop.Slow.add"}],
                  tool_budget=ToolBudgetConfig(max_round_trips=5, seconds_per_turn=1.5, seconds_per_call=10))
    q0 = steps(records, "q0")
    # the call is cut by what was left of the turn; on a loaded machine generation may spend it all before the call
    assert q0[1]["kind"] == "tool_error" and q0[1]["error"].startswith(
        ("add did not finish within", "add not run: this answer's 1.5 s are spent")), q0[1]["error"]
    assert q0[1]["tool"]["seconds"] < 1.5  # the call had what was left of the turn's 1.5 s, not 10 s
    assert q0[-1]["kind"] == "answer" and q0[-1]["tool_budget_spent"] == "seconds" and q0[-1]["tools"] == []


def test_a_tool_that_raises_is_reported_to_the_model_and_the_run_goes_on(tmp_path, questions):
    CALLS.clear()
    records = run(tmp_path, questions, tools=[{"_target_": "tests.answering.test_tool_loop.Broken.add"}],
                  tool_budget=ToolBudgetConfig(max_round_trips=2))
    errors = [r for r in records if r["kind"] == "tool_error"]
    assert errors and errors[0]["error"] == "add failed: RuntimeError: the adding machine is broken"
    assert (4821, 3907) in CALLS  # the tool really ran, with the model's arguments
    q0 = steps(records, "q0")
    told = [m for m in q0[-1]["messages"] if m["role"] == "tool"]
    assert told and told[0]["content"] == "add failed: RuntimeError: the adding machine is broken"
    assert q0[-1]["kind"] == "answer" and len([r for r in records if r["kind"] == "answer"]) == 3


def test_fail_fast_stops_at_the_first_tool_error_and_keeps_what_was_written(tmp_path, questions):
    config = make_config(TOOL_MODEL, questions, session=SessionConfig(tools=[{"_target_": "tests.answering.test_tool_loop.Broken.add"}]),
                         generation=GenerationConfig(max_new_tokens=64), execute=ExecuteConfig(fail_fast=True))
    plan, samples, template = plan_in_process(config)
    with TranscriptWriter(tmp_path / "t.jsonl") as writer, pytest.raises(ToolFailure) as failure:
        execute(in_process(load(plan, template), config), samples, config, writer, config.config_hash())
    assert str(failure.value).endswith(": add failed: RuntimeError: the adding machine is broken "
                                       "(execute.fail_fast=true stops at the first tool error)")
    kept = read_transcript(tmp_path / "t.jsonl")
    assert [r["kind"] for r in kept][-2:] == ["tool_call", "tool_error"]


def test_an_unknown_tool_name_is_reported_like_a_failure(tmp_path, questions):
    records = run(tmp_path, questions, tools=[{"_target_": "tests.answering.test_tool_loop.multiply"}],
                  tool_budget=ToolBudgetConfig(max_round_trips=1))
    # the model was trained to call "add"; offered only multiply, it still asks for add
    unknown = [r for r in records if r["kind"] == "tool_error" and r["tool"]["name"] == "add"]
    assert unknown and unknown[0]["error"] == "unknown tool 'add'; the tools are: multiply"
    assert all(r["kind"] != "tool_result" for r in records)


def test_a_call_cut_short_is_an_unparsable_tool_error(tmp_path, questions):
    records = run(tmp_path, questions, max_new_tokens=20, tool_budget=ToolBudgetConfig(max_round_trips=2))
    q0 = steps(records, "q0")
    assert q0[0]["kind"] == "tool_call" and q0[0]["finish_reason"] == "length" and q0[0]["tool"] == {"calls": []}
    assert q0[1]["kind"] == "tool_error" and q0[1]["tool"] is None
    assert "has no </tool_call> (cut short by max_new_tokens?)" in q0[1]["error"]
    assert q0[-1]["kind"] == "answer" and q0[-1]["messages"][-1]["content"] == "error: " + q0[1]["error"]


def test_skip_summarization_takes_the_tool_result_as_the_answer(tmp_path, questions):
    records = run(tmp_path, questions, skip_summarization=True)
    call, result, final = steps(records, "q1")
    assert final["kind"] == "answer" and final["response"] == result["response"] == "6912"
    assert final["finish_reason"] == "tool" and final["completion_tokens"] == 0 and final["score"] == 1.0
    assert len(records) == 9  # no model turn after any tool result


def test_tools_in_a_scripted_conversation_are_kept_in_its_history(tmp_path):
    dataset = write_jsonl(tmp_path / "talk.jsonl", [
        {"id": "talk", "turns": [{"content": "What is 1111+2222?", "reference": "3333"},
                                 {"content": "What is 4000+5000?", "reference": "9000"}]}])
    records = run(tmp_path, dataset, autosave=True)
    answers = [r for r in records if r["kind"] == "answer"]
    assert [(r["sample_id"], r["response"]) for r in answers] == [("talk#0", "3333"), ("talk#1", "9000")]
    second_turn = [r for r in records if r["sample_id"] == "talk#1"][0]["messages"]
    assert [m["role"] for m in second_turn] == ["user", "assistant", "tool", "assistant", "user"]
    saved = tmp_path / "conversations" / "talk.json"
    history = read_history(str(saved))
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"] * 2
    assert history[1].tool_calls[0].arguments == {"a": 1111, "b": 2222}
    assert json.loads(saved.read_text())[2] == {"role": "tool", "content": "3333", "name": "add"}


@pytest.mark.parametrize("model, session, message", [
    (TOOL_MODEL, dict(tools=[ADD], chat_template=False), "session.tools needs the model's chat template"),
    (ASSETS_DIR / "demo_model", dict(tools=[ADD]), "the chat template of .* ignores tools"),
    (TOOL_MODEL, dict(tools=[{"_target_": "pipeline.answering.demo_tools.subtract"}]),
     r"session.tools\[0\]._target_=pipeline.answering.demo_tools.subtract: pipeline.answering.demo_tools has no attribute"),
])
def test_the_plan_refuses_tools_that_cannot_work(questions, model, session, message):
    config = make_config(model, questions, session=SessionConfig(**session))
    with pytest.raises(UserError, match=message):
        plan_in_process(config)


def test_the_plan_records_the_tool_schemas_and_counts_them_in_the_prompt(questions):
    with_tools = make_config(TOOL_MODEL, questions, session=SessionConfig(tools=[ADD]))
    without = make_config(TOOL_MODEL, questions)
    planned, _, _ = plan_in_process(with_tools)
    plain, _, _ = plan_in_process(without)
    assert [t["function"]["name"] for t in planned.tools] == ["add"] and plain.tools == []
    assert planned.longest_prompt_tokens == plain.longest_prompt_tokens + 12  # <|system|>, "tools: add", <|end|>
