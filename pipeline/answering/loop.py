"""Answering: from a conversation to the model's final answer, with tool round trips in between.

Jobs are answered together, a round at a time: make each job's backend Request (the conversation,
the tools' schemas while the answer's tool budget lasts, the run's generation settings, the job's
own seed), count its prompt tokens through the backend, refuse the ones that outgrow the context
(an error record, or a UserError with execute.fail_fast), generate in batches of similar prompt
length (the backend's `generate`), then, where the model asked for tools (the completion's
tool calls), write that step, run the calls (pipeline.answering.tools) and add their results to the
conversation; generate again for those jobs only. A request the backend could not answer becomes
an error record (with execute.fail_fast=true it stops the run: RequestFailure); one that failed because
the backend itself is gone (Completion.unavailable: a server that no longer accepts connections)
stops the run after its batch's other records are handed over (BackendUnavailable), whatever
fail_fast says, so that a resume answers it and the rest once the backend is back. A
tool that fails, times out or does not exist, and a call that cannot be parsed, become tool_error
records that the model is told about (with execute.fail_fast=true the first one stops the run
instead: ToolFailure). When an answer's budget (`session.tool_budget`: round trips,
seconds) is spent, its next generation is offered no tools, which asks for the final answer. With
`session.skip_summarization` the tools' result is the answer and no model turn follows it.

Each step becomes a TranscriptRecord handed to `Answering.emit` batch by batch: the execute stage
writes them to the transcript, the Python client collects them. No files are touched here,
nothing here knows which backend answers (pipeline.backends.base is all it sees), and nothing
is scored here (answers leave with score null: pipeline.stages.score scores them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Callable, Optional

from pipeline.answering.tools import Tool, ToolOutcome, call_tool
from pipeline.backends.base import Backend, Completion, Request
from pipeline.core.config import Config
from pipeline.core.errors import BackendUnavailable, RequestFailure, ToolFailure, UserError
from pipeline.core.records import Message, Sample, TranscriptRecord
from pipeline.core.streaming import StreamSink, sample_seed
from pipeline.core.tool_calls import ParsedAnswer
from pipeline.data.prompts import as_dict

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0  # a progress line at most this often


@dataclass
class Job:
    """One answer to produce: a sample (or one turn of it), which of its num_samples, the conversation so far.

    Tool rounds append their steps to `messages`; `request` is the generation in progress."""

    sample: Sample
    sample_index: int
    messages: list[Message]
    turn: Optional[int] = None  # the turn of a scripted conversation
    request: Optional[Request] = None
    offered: list[str] = field(default_factory=list)  # the tools offered in the generation in progress
    step: int = 0  # records written for this answer so far
    round_trips: int = 0  # generate -> tools cycles so far
    spent_s: float = 0.0  # generation and tool seconds of this answer so far
    budget_spent: Optional[str] = None  # round_trips or seconds, once the tool budget has run out

    @property
    def record_id(self) -> str:
        return self.sample.id if self.turn is None else f"{self.sample.id}#{self.turn}"

    @property
    def reference(self) -> Optional[str]:
        return self.sample.reference if self.turn is None else self.sample.turns[self.turn].reference

    @property
    def seed_key(self) -> str:
        """What seeds this generation: the answer, and the step within it after a tool round."""
        return self.record_id if self.step == 0 else f"{self.record_id}/{self.step}"


@dataclass
class Answering:
    """What the answer loop works with besides the jobs: the backend, the settings, the tools, where records go."""

    backend: Backend
    config: Config
    tools: dict[str, Tool]
    emit: Callable[[list[TranscriptRecord]], None]  # takes each batch's records (the transcript writer's write_batch)
    config_hash: str
    sink: Optional[StreamSink] = None
    batch: int = 0  # the next batch number
    stage: str = "execute"  # what the progress lines are about (a judge's answers: judge)
    last_report: float = field(default_factory=time.perf_counter)

    @cached_property
    def generation(self) -> dict[str, Any]:
        """The run's effective generation settings: the plan's, when the backend was built from one;
        else the config's own, a null left null (the backend's default: a server's, say)."""
        if self.backend.generation:
            return self.backend.generation
        return {**asdict(self.config.generation), "do_sample": not self.config.generation.greedy}


def tools_by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {tool.name: tool for tool in tools}


def answer(context: Answering, jobs: list[Job]) -> list[TranscriptRecord]:
    """Each job's final answer record, in job order, after as many tool rounds as it takes."""
    finals: dict[int, TranscriptRecord] = {}
    pending = list(jobs)
    while pending:
        for job in pending:
            _prepare(context, job)
        lengths = prompt_lengths(context.backend, pending)
        for job in _over_context(context, pending, lengths):
            message = (f"{_describe(job)}: {lengths[id(job)]} prompt tokens + generation.max_new_tokens="
                       f"{context.generation['max_new_tokens']} does not fit the model's context of "
                       f"{context.backend.context_length} tokens")
            if job.turn is not None:
                message += "; the conversation ends here"
            if context.config.execute.fail_fast:
                raise UserError(message + " (execute.fail_fast=true)")
            log.warning(message)
            finals[id(job)] = _record(context, job, "answer", response="", status="error", error=message,
                                      finish_reason="error")
            context.emit([finals[id(job)]])
            pending.remove(job)
        pending = _generate_round(context, length_buckets(pending, lengths, context.backend.batch_size), finals)
    return [finals[id(job)] for job in jobs]


def _describe(job: Job) -> str:
    where = f"sample {job.sample.id!r}" if job.turn is None else f"turn {job.turn} of conversation {job.sample.id!r}"
    return where + (f" after {job.round_trips} tool round trip(s)" if job.round_trips else "")


def _prepare(context: Answering, job: Job) -> None:
    """Decide which tools this generation is offered (none once the budget is spent) and make its request."""
    budget = context.config.session.tool_budget
    if context.tools and job.budget_spent is None:
        if job.round_trips >= budget.max_round_trips:
            job.budget_spent = "round_trips"
        elif job.spent_s >= budget.seconds_per_turn:
            job.budget_spent = "seconds"
    job.offered = list(context.tools) if job.budget_spent is None else []
    settings = context.generation
    sampling = bool(settings["do_sample"])
    job.request = Request(
        messages=list(job.messages), max_new_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"] if sampling else 0.0, top_p=settings["top_p"], top_k=settings["top_k"],
        min_p=settings["min_p"], repetition_penalty=settings["repetition_penalty"], stop=list(settings["stop"]),
        # each answer (and each step of it after a tool round) has its own seed: its batch does not matter
        seed=sample_seed(settings["seed"], job.seed_key, job.sample_index) if sampling else None,
        tools=[context.tools[name].schema for name in job.offered], key=f"{job.record_id}/{job.sample_index}",
        sample_index=job.sample_index)


def _generate_round(context: Answering, batches: list[list[Job]], finals: dict[int, TranscriptRecord]) -> list[Job]:
    """One generation for each job, batch by batch; returns the jobs that called tools and go on."""
    config = context.config
    going_on: list[Job] = []
    for batch in batches:
        started_at = time.time()  # wall clock, for traces; latencies stay on the monotonic clock
        completions = context.backend.generate([_request(job) for job in batch], context.sink)
        gone = next((c for c in completions if c.unavailable), None)
        records: list[TranscriptRecord] = []
        for job, completion in zip(batch, completions):
            if completion.unavailable:
                continue  # no error record: a resume answers it once the backend is back
            job.spent_s += completion.latency_s
            text = config.session.prefill + completion.text
            measured: dict[str, Any] = dict(
                prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                finish_reason=_finish_reason(completion), ttft_s=round(completion.ttft_s, 6),
                latency_s=round(completion.latency_s, 6), truncated=completion.truncated, tools=list(job.offered),
                started_at=round(started_at, 6), cached=completion.cached, **_reasoning_fields(completion))
            if completion.failed:
                message = f"{_describe(job)}: the {context.backend.name} backend could not answer: {completion.error}"
                if config.execute.fail_fast:
                    context.emit(records)  # the batch's answers so far are kept
                    raise RequestFailure(message + " (execute.fail_fast=true)")
                log.warning(message)
                finals[id(job)] = _record(context, job, "answer", response="", status="error", error=message,
                                          **{**measured, "finish_reason": "error"})
                records.append(finals[id(job)])
                continue
            parsed = _parsed(completion) if job.offered else None
            if parsed is not None and parsed.wants_tools:
                where = _describe(job)
                steps = _tool_round(context, job, text, parsed, measured)
                records += steps
                failed = [step.error for step in steps if step.kind == "tool_error"]
                if failed and config.execute.fail_fast:
                    context.emit(records)  # the steps so far are kept
                    raise ToolFailure(f"{where}: {failed[0]} (execute.fail_fast=true stops at the first tool error)")
                if records[-1].kind == "answer":
                    finals[id(job)] = records[-1]
                else:
                    going_on.append(job)
            else:
                finals[id(job)] = _record(context, job, "answer", response=text,
                                          tool_budget_spent=job.budget_spent, **measured)
                records.append(finals[id(job)])
        context.emit(records)
        context.batch += 1
        if gone is not None:  # every request after this one would fail the same way: stop, keeping what was written
            lost = sum(c.unavailable for c in completions)
            raise BackendUnavailable(f"{gone.error} ({lost} request(s) of the last batch unanswered)")
        if time.perf_counter() - context.last_report >= PROGRESS_EVERY_S:
            log.info("%s: batch %d done", context.stage, context.batch)
            context.last_report = time.perf_counter()
    return going_on


def _reasoning_fields(completion: Completion) -> dict[str, Any]:
    """The transcript's reasoning fields of a completion (the answer is its text)."""
    answer_tokens = completion.answer_tokens
    if answer_tokens is None:
        answer_tokens = max(completion.completion_tokens - completion.reasoning_tokens, 0)
    return dict(reasoning=completion.reasoning, reasoning_tokens=completion.reasoning_tokens,
                answer_tokens=answer_tokens, reasoning_truncated=completion.reasoning_truncated,
                continuations=completion.continuations)


def _request(job: Job) -> Request:
    assert job.request is not None, "_prepare makes every pending job's request"
    return job.request


def _finish_reason(completion: Completion) -> str:
    """The transcript's finish reason: "tool" there means no model ran (a tool's result), so a
    generation that ended by calling tools records how the model stopped: at its end of turn."""
    return "stop" if completion.finish_reason == "tool" else completion.finish_reason


def _parsed(completion: Completion) -> ParsedAnswer:
    """The completion's tool calls as the tool loop takes them."""
    text = completion.text if completion.message_text is None else completion.message_text
    return ParsedAnswer(text, list(completion.tool_calls), list(completion.tool_problems))


def _tool_round(context: Answering, job: Job, text: str, parsed: ParsedAnswer,
                measured: dict[str, Any]) -> list[TranscriptRecord]:
    """Record the model's tool-call step, run its calls and add their results to the conversation.

    Ends with an answer record when skip_summarization takes the tools' results as the answer."""
    budget = context.config.session.tool_budget
    records = [_record(context, job, "tool_call", response=text,
                       tool={"calls": [{"name": c.name, "arguments": c.arguments} for c in parsed.calls]}, **measured)]
    job.messages.append(Message("assistant", parsed.text, tool_calls=tuple(parsed.calls)))
    results: list[str] = []
    for call in parsed.calls:
        called_at = time.time()
        tool = context.tools.get(call.name)
        left = budget.seconds_per_turn - job.spent_s
        if tool is None:
            outcome = ToolOutcome(False, f"unknown tool {call.name!r}; the tools are: {', '.join(context.tools)}", 0.0)
        elif left <= 0:
            outcome = ToolOutcome(False, f"{call.name} not run: this answer's {budget.seconds_per_turn:g} s are spent",
                                  0.0)
        else:
            outcome = call_tool(tool, call.arguments, min(budget.seconds_per_call, left))
        job.spent_s += outcome.seconds
        if hasattr(context.sink, "on_tool"):
            context.sink.on_tool(call.name, call.arguments, outcome.text, outcome.ok)
        records.append(_tool_record(context, job, outcome.ok, outcome.text,
                                    {"name": call.name, "arguments": call.arguments,
                                     "seconds": round(outcome.seconds, 6)}, called_at))
        job.messages.append(Message("tool", outcome.text, name=call.name))
        results.append(outcome.text if outcome.ok else "")
    for problem in parsed.problems:
        records.append(_tool_record(context, job, False, problem, None, time.time()))
        job.messages.append(Message("tool", f"error: {problem}"))
    job.round_trips += 1
    if context.config.session.skip_summarization and results and all(results) and not parsed.problems:
        response = "\n".join(results)
        records.append(_record(context, job, "answer", response=response, finish_reason="tool",
                               tools=list(job.offered)))
    return records


def _tool_record(context: Answering, job: Job, ok: bool, text: str,
                 tool: Optional[dict[str, Any]], started_at: float) -> TranscriptRecord:
    """A tool's result (what the model is shown) or the reason a call failed; no model ran for it."""
    return _record(context, job, "tool_result" if ok else "tool_error", response=text, tool=tool,
                   finish_reason="tool", status="ok" if ok else "error", error=None if ok else text, messages=[],
                   started_at=round(started_at, 6))


def _record(context: Answering, job: Job, kind: str, **fields: Any) -> TranscriptRecord:
    """A transcript record of this job's next step; `fields` fill in what happened."""
    values: dict[str, Any] = dict(
        sample_id=job.record_id, sample_index=job.sample_index, messages=[as_dict(m) for m in job.messages],
        reference=job.reference, score=None, prompt_tokens=0, completion_tokens=0, ttft_s=0.0, latency_s=0.0,
        batch=context.batch, config_hash=context.config_hash,
        conversation_id=None if job.turn is None else job.sample.id, turn=job.turn, kind=kind, step=job.step,
        started_at=round(time.time(), 6))  # records that ran no model (tool answers, refusals) start when made
    values.update(fields)
    job.step += 1
    return TranscriptRecord(**values)


def prompt_lengths(backend: Backend, jobs: list[Job]) -> dict[int, int]:
    """id(job) -> tokens of its request's prompt as the backend will send it."""
    counts = backend.count_tokens([_request(job) for job in jobs]) if jobs else []
    return {id(job): count for job, count in zip(jobs, counts)}


def _over_context(context: Answering, jobs: list[Job], lengths: dict[int, int]) -> list[Job]:
    """The jobs whose prompt leaves no room for max_new_tokens (none when prompts may be cut from the left)."""
    limit = context.backend.context_length
    if not limit or context.config.session.truncation == "left":
        return []
    return [job for job in jobs if lengths[id(job)] > limit - context.generation["max_new_tokens"]]


def length_buckets(jobs: list[Job], lengths: dict[int, int], batch_size: int) -> list[list[Job]]:
    """Batches of similar prompt length: longest first, ties kept in dataset order."""
    order = sorted(jobs, key=lambda job: -lengths[id(job)])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
