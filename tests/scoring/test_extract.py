"""dataset.scorer.extract: the answer taken out of a response before scoring, kept beside the raw response."""

from __future__ import annotations

import pytest

from pipeline.core.config import ScorerConfig
from pipeline.core.errors import UserError
from pipeline.scoring.extract import extract_answer
from pipeline.scoring.scorers import build_scorer
from pipeline.stages.score import score_record


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

    def scored(response, extract):
        record = score_record({"kind": "answer", "status": "ok", "response": response, "reference": "42"}, exact,
                              extract)
        assert record["response"] == response  # the raw response is kept
        return record["score"], record["extracted"]

    assert scored("so 40+2 #### 42", r"#### (\S+)") == (1.0, "42")
    assert scored("so 42", r"#### (\S+)") == (0.0, None)  # strict: no marker, no answer
    assert scored("so 42", None) == (0.0, "so 42")
    assert scored("I get 7 then 42", "last_number") == (1.0, "42")


@pytest.mark.parametrize("value,message", [("(", "a valid regular expression"), ("#### \\S+", "with a group")])
def test_bad_extract_is_refused(value, message):
    with pytest.raises(UserError, match=message):
        ScorerConfig(extract=value)


def test_a_sweep_may_optimise_a_log_likelihood_metric():
    from pipeline.core.config import PipelineConfig
    from pipeline.core.records import Summary
    from pipeline.core.objective import objective_value

    summary = Summary(num_samples=4, num_scored=4, num_errors=0, accuracy=0.75, correct=3, prompt_tokens=9,
                      completion_tokens=0, tokens_per_second=0.0, latency_p50_s=0.0, latency_p95_s=0.0, ttft_p50_s=0.0,
                      stage_seconds={}, likelihood={"acc": 0.75, "acc_norm": 0.5})
    assert PipelineConfig(objective="acc_norm").objective == "acc_norm"
    assert objective_value(summary, "acc_norm") == 0.5 and objective_value(summary, "accuracy") == 0.75
