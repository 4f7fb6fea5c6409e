"""Metrics of scoring by log-likelihood: multiple choice (acc, acc_norm, acc_bytes) and perplexity.

- acc: the choice with the highest log-likelihood is the right one;
- acc_norm: the same with each log-likelihood divided by the choice's length in characters (lm-eval's acc_norm);
- acc_bytes: divided by its length in UTF-8 bytes (lm-eval's acc_bytes);
each with its 95% interval (pipeline.scoring.intervals). Perplexity over documents, as lm-eval
aggregates it: word_perplexity = exp(-sum ll / sum words), byte_perplexity = exp(-sum ll / sum bytes),
bits_per_byte = -sum ll / sum bytes / ln 2, with words counted as runs split by white space.

Plain numbers and record dicts in, numbers out.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pipeline.scoring.intervals import mean_interval


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def predictions(loglikelihoods: list[float], choices: list[str]) -> dict[str, int]:
    """The index each metric picks: acc (raw), acc_norm (per character), acc_bytes (per byte)."""
    return {"acc": _argmax(loglikelihoods),
            "acc_norm": _argmax([ll / max(1, len(c)) for ll, c in zip(loglikelihoods, choices)]),
            "acc_bytes": _argmax([ll / max(1, len(c.encode("utf-8"))) for ll, c in zip(loglikelihoods, choices)])}


def document_counts(text: str) -> dict[str, int]:
    return {"words": len(re.split(r"\s+", text)), "bytes": len(text.encode("utf-8"))}


def likelihood_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """The multiple-choice or perplexity metrics of a transcript's records ({} when it has neither)."""
    scored = [r for r in records if r.get("kind", "answer") == "answer" and r.get("status", "ok") == "ok"
              and r.get("loglikelihood")]
    choices = [r["loglikelihood"] for r in scored if "loglikelihoods" in r["loglikelihood"]]
    documents = [r["loglikelihood"] for r in scored if "loglikelihoods" not in r["loglikelihood"]]
    metrics: dict[str, float] = {}
    if choices:
        for name, key in (("acc", "prediction"), ("acc_norm", "prediction_norm"), ("acc_bytes", "prediction_bytes")):
            hits = [float(c[key] == c["answer"]) for c in choices]
            low, high, _ = mean_interval(hits)
            metrics.update({name: sum(hits) / len(hits), f"{name}_ci_low": low, f"{name}_ci_high": high})
    if documents:
        total = sum(d["loglikelihood"] for d in documents)
        words, size = sum(d["words"] for d in documents), sum(d["bytes"] for d in documents)
        metrics.update(word_perplexity=math.exp(-total / words), byte_perplexity=math.exp(-total / size),
                       bits_per_byte=-total / size / math.log(2), loglikelihood=total,
                       tokens=float(sum(d["tokens"] for d in documents)))
    return metrics
