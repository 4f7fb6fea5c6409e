"""How well two graders agree on the same answers: the share agreeing and Cohen's kappa.

Each grade is read as pass or fail (a score or grade of 0.5 or more passes), so a string scorer's
0/1 and a judge's grade on a scale compare. Kappa is the agreement beyond what two graders with
these pass rates would reach by chance: (p_o - p_e) / (1 - p_e); None where chance alone agrees on
everything (both graders gave every answer the same grade), which leaves nothing to measure.
Plain numbers in and out; nothing here knows about runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

PASS = 0.5


@dataclass(frozen=True)
class Agreement:
    n: int  # answers both graders graded
    agreeing: int
    share: Optional[float]  # agreeing / n
    kappa: Optional[float]


def agreement(a: Sequence[float], b: Sequence[float]) -> Agreement:
    """Agreement of two graders over the same answers, in the same order."""
    passes = [(x >= PASS, y >= PASS) for x, y in zip(a, b, strict=True)]
    n = len(passes)
    if n == 0:
        return Agreement(0, 0, None, None)
    agreeing = sum(x == y for x, y in passes)
    observed = agreeing / n
    pass_a, pass_b = sum(x for x, _ in passes) / n, sum(y for _, y in passes) / n
    chance = pass_a * pass_b + (1 - pass_a) * (1 - pass_b)
    kappa = None if chance >= 1 else (observed - chance) / (1 - chance)
    return Agreement(n, agreeing, observed, kappa)
