"""The number a sweep job returns to Hydra: the summary metric named by `pipeline.objective`.

Hydra's sweepers optimise what the job function returns (Optuna maximises or minimises it, per
`hydra.sweeper.direction`). Any numeric field of the run's Summary can be chosen (accuracy,
tokens_per_second, latency_p95_s, ...), `pass_at_<k>`, or a log-likelihood metric (acc_norm, bits_per_byte, ...). A job that failed, or whose summary has
no such value (accuracy without references), returns NaN, which Optuna records as a failed trial
instead of stopping the study.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any, Optional, get_type_hints

from pipeline.core.records import Summary

PASS_AT = re.compile(r"pass_at_(\d+)")
# scored by log-likelihood (Summary.likelihood, pipeline.scoring.choices)
LIKELIHOOD = ("acc", "acc_norm", "acc_bytes", "word_perplexity", "byte_perplexity", "bits_per_byte")


def objective_names() -> list[str]:
    """The Summary fields that are numbers (what an objective may name), besides pass_at_<k>."""
    hints = get_type_hints(Summary)
    return [f.name for f in fields(Summary) if _numeric(hints[f.name])] + list(LIKELIHOOD)


def is_objective(name: str) -> bool:
    return name in objective_names() or PASS_AT.fullmatch(name) is not None


def objective_value(summary: Optional[Summary], name: str) -> float:
    """The objective's value for this run; NaN when the run has none."""
    if summary is None:
        return math.nan
    values = summary.to_dict()
    match = PASS_AT.fullmatch(name)
    value = (values.get("pass_at_k") or {}).get(match.group(1)) if match else values.get(
        name, (values.get("likelihood") or {}).get(name))
    return math.nan if value is None else float(value)


def _numeric(hint: Any) -> bool:
    return hint in (int, float) or hint in (Optional[int], Optional[float])
