"""MLflow traces from a transcript: one trace per answer (a sample, or a turn of a conversation).

A trace shows what the model was given (`messages`) and what it said, with token counts, score,
time to first token (an event) and the real start and end times (`started_at`, `latency_s`).
An answer reached through tool calls gets child spans: each generation (CHAT_MODEL) and each
tool call (TOOL, ERROR when it failed). Turns of a scripted conversation share a session id.

Traces are built from transcript.jsonl after execute, so generation pays nothing for them, and
written in a few batched calls: the store's `log_spans` (the call MLflow's own exporter makes,
one transaction for many traces) and `link_traces_to_run`, 100 traces at a time. One
`start_trace`/`end_trace` round trip per sample costs about 45 ms on SQLite, which would add
9 s to a 200-sample run. Trace and span ids are derived from the run id and the answer, so
logging the same transcript again (a resumed run) updates the traces instead of repeating them.
Secrets in messages and tool arguments are masked as everywhere else. Image parts of the messages
are shown as thumbnails beside their path and sha256 (pipeline.tracking.trace_images). Nothing
here scores, generates or uploads files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any, Iterable, Optional

from pipeline.core.redact import redact
from pipeline.tracking.trace_images import with_images

LINKS_PER_CALL = 100  # MLflow refuses more traces per link_traces_to_run
TRACES_PER_CALL = 200  # traces per log_spans call: one transaction each, kept to a bounded size
MODEL_RAN = ("answer", "tool_call")  # record kinds that a generation produced (unless finish_reason is tool)


def group_answers(records: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records of each answer (its tool steps, then the answer), in transcript order."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["sample_id"], record.get("sample_index", 0)), []).append(record)
    return list(groups.values())


def traced(records: list[dict[str, Any]], limit: Optional[int]) -> list[dict[str, Any]]:
    """The records of the answers that get a trace: all of them, or `limit` answers chosen by a digest of their
    sample id (the same answers in every run over the same dataset, so runs can be compared trace by trace),
    in transcript order."""
    answers = group_answers(records)
    if limit is None or len(answers) <= limit:
        return records
    chosen = sorted(range(len(answers)), key=lambda i: _digest(answers[i][0]["sample_id"],
                                                               answers[i][0].get("sample_index", 0)))[:limit]
    return [record for index in sorted(chosen) for record in answers[index]]


def trace_id(run_id: str, steps: list[dict[str, Any]]) -> str:
    """The MLflow trace id of an answer in a run: tr- and 32 hex digits, the same every time."""
    return "tr-" + _digest(run_id, steps[0]["sample_id"], steps[0].get("sample_index", 0))[:32]


def answer_spans(run_id: str, steps: list[dict[str, Any]], fallback_start: float,
                 thumbnails: Optional[dict[str, Optional[str]]] = None) -> list[dict[str, Any]]:
    """The spans of one answer's trace as MLflow span dicts: the root first, then its children.

    `fallback_start` stands in for `started_at` in transcripts written before it existed;
    `thumbnails` caches the images' thumbnails across the answers of a run."""
    thumbnails = {} if thumbnails is None else thumbnails
    mlflow_id = trace_id(run_id, steps)
    otel_id = int(mlflow_id[3:], 16)
    final = steps[-1]
    root_id = _span_id(mlflow_id, "root")
    children = []
    if len(steps) > 1:
        for step in steps:
            children.append(_step_span(mlflow_id, otel_id, root_id, step, fallback_start, thumbnails))
    start = min((c["start_time_unix_nano"] for c in children), default=_start_ns(final, fallback_start))
    end = max((c["end_time_unix_nano"] for c in children), default=start + _ns(final.get("latency_s", 0.0)))
    root_attributes = {
        "sample_id": final["sample_id"], "sample_index": final.get("sample_index", 0),
        "reference": final.get("reference"), "score": final.get("score"), "status": final.get("status", "ok"),
        "error": final.get("error"), "finish_reason": final.get("finish_reason"), "batch": final.get("batch"),
        "config_hash": final.get("config_hash"), "truncated": final.get("truncated", False),
        "prompt_tokens": sum(s.get("prompt_tokens", 0) for s in steps),
        "completion_tokens": sum(s.get("completion_tokens", 0) for s in steps),
        "ttft_s": steps[0].get("ttft_s"), "latency_s": round((end - start) / 1e9, 6),
        "tool_calls": sum(s.get("kind") in ("tool_result", "tool_error") for s in steps),
        "mlflow.traceTag.mlflow.traceName": final["sample_id"],
    }
    if final.get("conversation_id") is not None:
        root_attributes.update({"session.id": final["conversation_id"], "turn": final.get("turn")})
    events = []
    if not children:  # the root is the generation itself
        root_attributes["mlflow.chat.tokenUsage"] = _usage(final)
        events = _first_token(final, start)
    root = _span_dict(mlflow_id, otel_id, root_id, None, name=final["sample_id"],
                      span_type="AGENT" if children else "CHAT_MODEL", start=start, end=end,
                      inputs={"messages": with_images(steps[0].get("messages", []), thumbnails)},
                      outputs=chat_output(final),
                      attributes=root_attributes, events=events, ok=final.get("status", "ok") == "ok",
                      message=final.get("error") or "")
    return [root, *children]


def _step_span(mlflow_id: str, otel_id: int, root_id: int, step: dict[str, Any], fallback_start: float,
               thumbnails: dict[str, Optional[str]]) -> dict:
    """A child span: a generation on the way to the answer, or a tool call."""
    start = _start_ns(step, fallback_start)
    span_id = _span_id(mlflow_id, str(step.get("step", 0)))
    ok = step.get("status", "ok") == "ok"
    if step.get("kind") in MODEL_RAN and step.get("finish_reason") != "tool":
        return _span_dict(mlflow_id, otel_id, span_id, root_id, name=f"generate {step.get('step', 0)}",
                          span_type="CHAT_MODEL", start=start, end=start + _ns(step.get("latency_s", 0.0)),
                          inputs={"messages": with_images(step.get("messages", []), thumbnails),
                                  "tools": step.get("tools", [])},
                          outputs=chat_output(step), events=_first_token(step, start), ok=ok,
                          attributes={"kind": step.get("kind"), "prompt_tokens": step.get("prompt_tokens", 0),
                                      "completion_tokens": step.get("completion_tokens", 0),
                                      "ttft_s": step.get("ttft_s"), "finish_reason": step.get("finish_reason"),
                                      "reasoning_tokens": step.get("reasoning_tokens", 0),
                                      "reasoning_truncated": step.get("reasoning_truncated", False),
                                      "mlflow.chat.tokenUsage": _usage(step)})
    tool = step.get("tool") or {}
    return _span_dict(mlflow_id, otel_id, span_id, root_id, name=tool.get("name") or step.get("kind", "tool"),
                      span_type="TOOL", start=start, end=start + _ns(tool.get("seconds", 0.0)),
                      inputs=tool.get("arguments"), outputs=step.get("response"), ok=ok,
                      message=step.get("error") or "", attributes={"kind": step.get("kind")})


def _span_dict(mlflow_id: str, otel_id: int, span_id: int, parent_id: Optional[int], *, name: str, span_type: str,
               start: int, end: int, inputs: Any, outputs: Any, attributes: dict[str, Any],
               events: list[dict[str, Any]] = (), ok: bool = True, message: str = "") -> dict[str, Any]:
    """A span in the dict form `mlflow.entities.Span.from_dict` reads: attribute values JSON-encoded."""
    values = {"mlflow.traceRequestId": mlflow_id, "mlflow.spanType": span_type,
              "mlflow.spanInputs": redact(inputs), "mlflow.spanOutputs": redact(outputs), **attributes}
    return {
        "trace_id": _b64(otel_id, 16), "span_id": _b64(span_id, 8),
        "parent_span_id": _b64(parent_id, 8) if parent_id else None,
        "name": name, "start_time_unix_nano": start, "end_time_unix_nano": max(end, start),
        "events": list(events),
        "status": {"code": "STATUS_CODE_OK" if ok else "STATUS_CODE_ERROR", "message": message},
        "attributes": {key: json.dumps(value, ensure_ascii=False) for key, value in values.items()
                       if value is not None},
    }


def log_traces(tracking_uri: str, experiment_id: str, run_id: str, records: list[dict[str, Any]]) -> int:
    """Write one trace per answer of the transcript and link them to the run; returns the number of traces."""
    from mlflow.entities import Span
    from mlflow.tracing.client import TracingClient
    from mlflow.tracking import MlflowClient

    answers = group_answers(records)
    fallback_start = time.time()
    thumbnails: dict[str, Optional[str]] = {}
    store = TracingClient(tracking_uri)
    for first in range(0, len(answers), TRACES_PER_CALL):
        spans = [Span.from_dict(span) for steps in answers[first:first + TRACES_PER_CALL]
                 for span in answer_spans(run_id, steps, fallback_start, thumbnails)]
        store.log_spans(experiment_id, spans)
    client = MlflowClient(tracking_uri)
    ids = [trace_id(run_id, steps) for steps in answers]
    for first in range(0, len(ids), LINKS_PER_CALL):
        client.link_traces_to_run(ids[first:first + LINKS_PER_CALL], run_id)
    return len(answers)


def chat_output(step: dict[str, Any]) -> dict[str, Any]:
    """A response in the chat-completion shape that MLflow's UI shows as the assistant's message."""
    message = {"role": "assistant", "content": step.get("response", "")}
    if step.get("reasoning") or step.get("reasoning_truncated"):  # the thinking beside the answer, as servers send it
        message["reasoning_content"] = step.get("reasoning", "")
    return {"choices": [{"message": message, "finish_reason": step.get("finish_reason")}]}


def _usage(step: dict[str, Any]) -> dict[str, int]:
    prompt, completion = step.get("prompt_tokens", 0), step.get("completion_tokens", 0)
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}


def _first_token(step: dict[str, Any], start: int) -> list[dict[str, Any]]:
    if not step.get("ttft_s"):
        return []
    return [{"name": "first_token", "time_unix_nano": start + _ns(step["ttft_s"]), "attributes": {}}]


def _start_ns(step: dict[str, Any], fallback_start: float) -> int:
    started_at = step.get("started_at")
    return _ns(fallback_start if started_at is None else started_at)


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _span_id(mlflow_id: str, which: str) -> int:
    return int(_digest(mlflow_id, which)[:16], 16) or 1  # 0 is OpenTelemetry's "no span"


def _digest(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).hexdigest()


def _b64(number: int, size: int) -> str:
    return base64.b64encode(number.to_bytes(size, "big")).decode()
