"""dataset.scorer.extract: the answer taken out of a response before scoring, kept beside the raw response."""

from __future__ import annotations

import pytest

from pipeline.core.config import ScorerConfig
from pipeline.core.errors import UserError
from pipeline.run.rescore import rescore_record
from pipeline.scoring.extract import extract_answer, score_response
from pipeline.scoring.scorers import build_scorer


@pytest.mark.parametrize("response,extract,expected", [
    ("12 + 30 = 42, so 1,234 apples.", "last_number", "1,234"),
    ("no digits here", "last_number", None),
    ("Reasoning... #### 72", r"#### (\S+)", "72"),
    ("The answer is 72", r"#### (\S+)", None),
])
def test_extract_answer(response, extract, expected):
    assert extract_answer(response, extract) == expected


def test_score_keeps_raw_response_and_extracted_answer():
    exact = build_scorer(ScorerConfig(name="exact_match"))
    assert score_response(exact, r"#### (\S+)", "so 40+2 #### 42", "42") == (1.0, "42")
    assert score_response(exact, r"#### (\S+)", "so 42", "42") == (0.0, None)  # strict: no marker, no answer
    assert score_response(exact, None, "so 42", "42") == (0.0, None)
    record = {"kind": "answer", "status": "ok", "response": "I get 7 then 9", "reference": "9", "score": 0.0}
    assert rescore_record(record, exact, "last_number") == {**record, "score": 1.0, "extracted": "9"}


@pytest.mark.parametrize("value,message", [("(", "a valid regular expression"), ("#### \\S+", "with a group")])
def test_bad_extract_is_refused(value, message):
    with pytest.raises(UserError, match=message):
        ScorerConfig(extract=value)


def test_a_sweep_may_optimise_a_log_likelihood_metric():
    from pipeline.core.config import PipelineConfig
    from pipeline.core.records import Summary
    from pipeline.scoring.objective import objective_value

    summary = Summary(num_samples=4, num_scored=4, num_errors=0, accuracy=0.75, correct=3, prompt_tokens=9,
                      completion_tokens=0, tokens_per_second=0.0, latency_p50_s=0.0, latency_p95_s=0.0, ttft_p50_s=0.0,
                      stage_seconds={}, likelihood={"acc": 0.75, "acc_norm": 0.5})
    assert PipelineConfig(objective="acc_norm").objective == "acc_norm"
    assert objective_value(summary, "acc_norm") == 0.5 and objective_value(summary, "accuracy") == 0.75
