"""Answer extraction before scoring (dataset.scorer.extract), as lm-eval's GSM8K filters do.

`last_number` takes the last number the response writes ("... so the answer is 1,234." -> "1,234");
any other value is a regular expression whose first group is the answer ("#### (\\S+)", lm-eval's
strict match). A response where nothing is found has no answer: it scores 0 (None without a
reference), and the record keeps `extracted: null` beside the raw response.

Pure functions over strings; the score stage (pipeline.stages.score.scored_text) calls `extract_answer`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional

from pipeline.scoring.scorers import NUMBER

LAST_NUMBER = "last_number"


def extract_answer(response: str, extract: str) -> Optional[str]:
    """What `extract` finds in the response, or None."""
    if extract == LAST_NUMBER:
        numbers = [m.group(0) for m in NUMBER.finditer(response) if any(ch.isdigit() for ch in m.group(0))]
        return numbers[-1] if numbers else None
    match = _compiled(extract).search(response)
    return None if match is None else match.group(1)


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)
