"""Summarize stage: the transcript's records -> a Summary (scores, their interval, pass@k, speed).

Pure computation over what execute and score wrote, read as TranscriptRecords (what older
transcripts lack is filled in by TranscriptRecord.from_dict); writing summary.json and logging to MLflow are the runner's and the tracker's jobs, and
peak memory is measured by the caller (the kind's own: pipeline.backends.peak_memory for a model in this process).

Scores: `accuracy` is the mean score of the answers that have one. Its 95% interval is taken over
samples, not completions: the num_samples completions of one prompt are not independent, so each
sample counts once, with the mean of its completions' scores (pipeline.scoring.intervals picks Wilson or the
bootstrap). pass@k uses each sample's n completions and c of them with full marks (score 1).

Speed: a batch's rows share one prefill, which ends at their common ttft_s, and are decoded
together until the batch's slowest row ends. So prefill tokens/s = the batches' real (unpadded)
prompt tokens / the sum of their ttft_s, and decode tokens/s = the tokens generated after the
first (which the prefill yields) / the sum of (slowest latency_s - ttft_s) over the batches.
Answers read from the response cache (`cached`) are counted (`cache_hits`) and left out of the speed
figures: this run did not generate them, and their timings are the run's that did.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Optional

from pipeline.core.records import Summary, TranscriptRecord
from pipeline.scoring.agreement import PASS, agreement
from pipeline.scoring.choices import likelihood_metrics
from pipeline.scoring.intervals import k_values, mean_interval, pass_at_k


def summarize(records: list[dict[str, Any]], stage_seconds: dict[str, float], scorer: str = "",
              peak_memory: tuple[Optional[int], str] = (None, "")) -> Summary:
    rows = [TranscriptRecord.from_dict(record) for record in records]  # older records' defaults filled in
    prompt_tokens = sum(r.prompt_tokens for r in rows)  # tool-call steps count: they ran the model
    completion_tokens = sum(r.completion_tokens for r in rows)
    kinds = [r.kind for r in rows]
    ran_model = [r for r in rows if r.kind in ("answer", "tool_call") and r.ok and r.finish_reason != "tool"]
    generations = [r for r in ran_model if not r.cached]
    answers = [r for r in rows if r.is_answer]
    scored = [r for r in answers if r.score is not None]
    scores = [r.score for r in scored]
    by_sample: dict[str, list[float]] = defaultdict(list)
    for record in scored:
        by_sample[record.sample_id].append(record.score)
    low, high, method = mean_interval([sum(s) / len(s) for s in by_sample.values()])
    execute_seconds = stage_seconds.get("execute", 0.0)
    completed = [r for r in answers if r.ok]
    latencies = sorted(r.latency_s for r in completed if not r.cached)
    ttfts = sorted(r.ttft_s for r in completed if not r.cached)
    generated_tokens = sum(r.completion_tokens for r in rows if not r.cached)
    prefill, decode = _throughput(generations)
    reasoning = sorted(r.reasoning_tokens for r in completed)
    answer_tokens = [r.answer_tokens for r in completed]
    return Summary(
        num_samples=len(answers),
        num_scored=len(scores),
        num_errors=len(answers) - len(completed),
        accuracy=sum(scores) / len(scores) if scores else None,
        correct=sum(score == 1.0 for score in scores),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tokens_per_second=generated_tokens / execute_seconds if execute_seconds > 0 else 0.0,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        ttft_p50_s=percentile(ttfts, 50),
        stage_seconds=dict(stage_seconds),
        tool_calls=sum(kind in ("tool_result", "tool_error") for kind in kinds),
        tool_errors=kinds.count("tool_error"),
        scorer=scorer,
        accuracy_ci_low=low,
        accuracy_ci_high=high,
        accuracy_ci_method=method,
        accuracy_ci_samples=len(by_sample),
        pass_at_k=pass_at_ks(by_sample),
        prefill_tokens_per_second=prefill,
        decode_tokens_per_second=decode,
        ttft_p95_s=percentile(ttfts, 95),
        peak_memory_bytes=peak_memory[0],
        peak_memory_kind=peak_memory[1],
        reasoning_tokens_mean=sum(reasoning) / len(reasoning) if reasoning else 0.0,
        reasoning_tokens_p95=float(percentile(reasoning, 95)),
        reasoning_truncated_share=(sum(r.reasoning_truncated for r in completed) / len(completed)
                                   if completed else 0.0),
        answer_tokens_mean=sum(answer_tokens) / len(answer_tokens) if answer_tokens else 0.0,
        likelihood=likelihood_metrics(records),
        cache_hits=sum(r.cached for r in ran_model),
        judge=judge_figures(answers),
    )


def judge_figures(answers: list[TranscriptRecord]) -> dict[str, Any]:
    """The judge's figures (scoring=judge; {} without one): its mean grade with a 95% interval over samples,
    answers graded and failed (a failed judgement has no grade), and its agreement with dataset.scorer
    over the answers both graded, with the answers where they disagree."""
    judged = [r for r in answers if r.judge is not None]
    if not judged:
        return {}
    graded = [r for r in judged if r.judge.get("grade") is not None]
    by_sample: dict[str, list[float]] = defaultdict(list)
    for record in graded:
        by_sample[record.sample_id].append(record.judge["grade"])
    low, high, method = mean_interval([sum(g) / len(g) for g in by_sample.values()])
    both = [r for r in graded if r.score is not None]
    agreed = agreement([r.score for r in both], [r.judge["grade"] for r in both])
    return {
        "name": judged[0].judge.get("name", "judge"),
        "mean": sum(r.judge["grade"] for r in graded) / len(graded) if graded else None,
        "ci_low": low, "ci_high": high, "ci_method": method,
        "graded": len(graded),
        "errors": sum(r.judge.get("error") is not None for r in judged),
        "agreement": agreed.share, "kappa": agreed.kappa, "agreement_n": agreed.n,
        "disagreements": [f"{r.sample_id}/{r.sample_index}" for r in both
                          if (r.score >= PASS) != (r.judge["grade"] >= PASS)],
        "prompt_tokens": sum(r.judge.get("prompt_tokens", 0) for r in judged),
        "completion_tokens": sum(r.judge.get("completion_tokens", 0) for r in judged),
    }


def pass_at_ks(by_sample: dict[str, list[float]]) -> dict[str, float]:
    """{"k": mean pass@k over the samples} for each k worth reporting; {} with one completion per sample."""
    n = min((len(scores) for scores in by_sample.values()), default=0)
    if n < 2:
        return {}
    counts = [(len(scores), sum(score == 1.0 for score in scores)) for scores in by_sample.values()]
    return {str(k): sum(pass_at_k(tries, passed, k) for tries, passed in counts) / len(counts) for k in k_values(n)}


def _throughput(generations: list[TranscriptRecord]) -> tuple[float, float]:
    """(prefill, decode) tokens per second over the batches these model generations ran in."""
    batches: dict[Any, list[TranscriptRecord]] = defaultdict(list)
    for record in generations:
        batches[record.batch].append(record)
    prefill_tokens = prefill_seconds = decode_tokens = decode_seconds = 0.0
    for batch in batches.values():
        ttft = max(r.ttft_s for r in batch)
        prefill_tokens += sum(r.prompt_tokens for r in batch)
        prefill_seconds += ttft
        decode_tokens += sum(max(r.completion_tokens - 1, 0) for r in batch)
        decode_seconds += max(max(r.latency_s for r in batch) - ttft, 0.0)
    return (prefill_tokens / prefill_seconds if prefill_seconds > 0 else 0.0,
            decode_tokens / decode_seconds if decode_seconds > 0 else 0.0)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
