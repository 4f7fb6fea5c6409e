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
