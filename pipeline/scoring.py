"""Scores for a response against its reference answer."""

from __future__ import annotations

from typing import Optional


def exact_match(response: str, reference: Optional[str]) -> Optional[float]:
    """1.0 when the response equals the reference once surrounding white space is stripped;
    None when there is no reference to compare with."""
    if reference is None:
        return None
    return 1.0 if response.strip() == reference.strip() else 0.0
