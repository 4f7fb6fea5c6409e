"""Summarize stage: the transcript's records -> a Summary (scores and speed).

Pure computation over what execute wrote; writing summary.json and logging to MLflow are the
runner's and the tracker's jobs.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.records import Summary


def summarize(records: list[dict[str, Any]], stage_seconds: dict[str, float]) -> Summary:
    prompt_tokens = sum(r["prompt_tokens"] for r in records)  # tool-call steps count: they ran the model
    completion_tokens = sum(r["completion_tokens"] for r in records)
    kinds = [r.get("kind", "answer") for r in records]
    records = [r for r, kind in zip(records, kinds) if kind == "answer"]
    scores = [r["score"] for r in records if r.get("score") is not None]
    correct = int(sum(scores))
    execute_seconds = stage_seconds.get("execute", 0.0)
    completed = [r for r in records if r.get("status", "ok") == "ok"]
    latencies = sorted(r["latency_s"] for r in completed)
    ttfts = sorted(r.get("ttft_s", 0.0) for r in completed)
    return Summary(
        num_samples=len(records),
        num_scored=len(scores),
        num_errors=len(records) - len(completed),
        accuracy=correct / len(scores) if scores else None,
        correct=correct,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tokens_per_second=completion_tokens / execute_seconds if execute_seconds > 0 else 0.0,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        ttft_p50_s=percentile(ttfts, 50),
        stage_seconds=dict(stage_seconds),
        tool_calls=sum(kind in ("tool_result", "tool_error") for kind in kinds),
        tool_errors=kinds.count("tool_error"),
    )


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
