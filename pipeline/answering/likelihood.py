"""Scoring by log-likelihood instead of generation: multiple-choice questions and perplexity documents.

dataset.kind=multiple_choice: each sample's choices (after dataset.target_delimiter) are scored after
its prompt by the backend's `loglikelihoods`, in batches of similar prompt length; the record's
response is the likeliest choice, its score 1 when that is the right one (acc), and its
`loglikelihood` field keeps every choice's log-likelihood, whether it was the greedy continuation,
its tokens, characters and UTF-8 bytes (for acc_norm and acc_bytes, pipeline.scoring.choices), the
prediction and the answer. dataset.kind=perplexity: each document's log-likelihood by the
backend's rolling windows, with its tokens, words and bytes.

Records go to `emit` a batch at a time, as generated answers do, so a resumed run skips what is done.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from pipeline.backends.base import Backend, ChoicesRequest
from pipeline.core.config import Config
from pipeline.core.errors import RequestFailure
from pipeline.core.records import Sample, TranscriptRecord
from pipeline.data.prompts import as_dict, conversation
from pipeline.scoring.choices import document_counts, predictions

log = logging.getLogger(__name__)
Emit = Callable[[list[TranscriptRecord]], None]


def score_choices(backend: Backend, samples: list[Sample], config: Config, emit: Emit, config_hash: str,
                  first_batch: int = 0, sink: Any = None) -> int:
    """Every sample's choices scored; returns the next batch number."""
    delimiter = config.dataset.target_delimiter
    order = sorted(samples, key=lambda s: -sum(len(m.content) for m in s.messages))  # similar lengths batch together
    batch = first_batch
    size = max(1, backend.batch_size)
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        started_at = time.time()
        messages = {s.id: conversation(s, config.session) for s in chunk}
        results = backend.loglikelihoods([ChoicesRequest(messages[s.id], [delimiter + c for c in s.choices], s.id)
                                          for s in chunk])
        records = []
        for sample, result in zip(chunk, results):
            base = _base(sample, messages[sample.id], batch, config_hash, started_at)
            if result.error is not None:
                message = f"sample {sample.id!r}: the {backend.name} backend could not score its choices: {result.error}"
                if config.execute.fail_fast:
                    emit(records)
                    raise RequestFailure(message + " (execute.fail_fast=true)")
                log.warning(message)
                records.append(TranscriptRecord(**base, response="", reference=sample.reference, score=0.0,
                                                prompt_tokens=result.context_tokens, completion_tokens=0, ttft_s=0.0,
                                                finish_reason="error",
                                                latency_s=round(result.latency_s, 6), status="error", error=message))
                continue
            lls = [c.loglikelihood for c in result.continuations]
            chosen = predictions(lls, list(sample.choices))
            records.append(TranscriptRecord(
                **base, response=sample.choices[chosen["acc"]], reference=sample.reference,
                score=float(chosen["acc"] == sample.answer), prompt_tokens=result.context_tokens,
                completion_tokens=0, finish_reason="stop", truncated=result.truncated, cached=result.cached,
                # nothing is generated: the whole batch is prefill, so its speed shows as prefill tokens/s
                ttft_s=round(result.latency_s, 6), latency_s=round(result.latency_s, 6),
                loglikelihood={"loglikelihoods": lls, "is_greedy": [c.is_greedy for c in result.continuations],
                               "tokens": [c.tokens for c in result.continuations],
                               "chars": [len(c) for c in sample.choices],
                               "bytes": [len(c.encode("utf-8")) for c in sample.choices],
                               "merged": [c.merged for c in result.continuations],
                               "prediction": chosen["acc"], "prediction_norm": chosen["acc_norm"],
                               "prediction_bytes": chosen["acc_bytes"], "answer": sample.answer}))
            if sink is not None and hasattr(sink, "on_complete"):
                sink.on_complete(0, records[-1].response)
        emit(records)
        batch += 1
    return batch


def score_documents(backend: Backend, samples: list[Sample], config: Config, emit: Emit, config_hash: str,
                    first_batch: int = 0, sink: Any = None) -> int:
    """Every document's rolling log-likelihood, one record each; returns the next batch number."""
    batch = first_batch
    for sample in samples:
        started_at = time.time()
        text = "\n\n".join(m.content for m in sample.messages)
        (result,) = backend.rolling_loglikelihoods([text])
        base = _base(sample, [m for m in sample.messages], batch, config_hash, started_at)
        if result.error is not None:
            raise RequestFailure(f"sample {sample.id!r}: the {backend.name} backend could not score it: {result.error}")
        emit([TranscriptRecord(**base, response="", reference=None, score=None, prompt_tokens=result.tokens,
                               completion_tokens=0, finish_reason="stop", latency_s=round(result.latency_s, 6),
                               ttft_s=round(result.latency_s, 6), cached=result.cached,
                               loglikelihood={"loglikelihood": result.loglikelihood, "tokens": result.tokens,
                                              "windows": result.windows, **document_counts(text)})])
        if sink is not None and hasattr(sink, "on_complete"):
            sink.on_complete(0, "")
        batch += 1
    return batch


def _base(sample: Sample, messages: list, batch: int, config_hash: str, started_at: float) -> dict[str, Any]:
    return dict(sample_id=sample.id, sample_index=0, messages=[as_dict(m) for m in messages], batch=batch,
                config_hash=config_hash, started_at=round(started_at, 6))


def pending(samples: list[Sample], done: Optional[dict]) -> list[Sample]:
    """The samples a resumed run has not scored yet."""
    return [s for s in samples if (s.id, 0) not in (done or {})]
