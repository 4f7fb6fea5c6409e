"""Reading a judge's reply: its grade (a number in [0, 1]) and its reason, or why it cannot be read.

`scoring.judge.verdict` says how:
- grade: the reply starts with one of the grade words (`scoring.judge.grades`: correct -> 1.0,
  incorrect -> 0.0; case and markup such as ** or quotes around it aside), or says `grade: <word>` /
  `verdict: <word>` somewhere; the reason is the rest of the reply;
- scale: the reply starts with a number (or says `score: <n>`) between scale_min and scale_max,
  scaled into [0, 1];
- json: the first {...} object in the reply, its `grade_key` a grade word or a number on the scale,
  its `reason_key` the reason.
A reply that does not say one of these, or says a number off the scale, is unreadable: a
`Verdict` with `error` and no grade. Nothing here guesses a grade.

`majority` folds several judgements of one answer (scoring.judge.samples) into one: the most
frequent grade, a tie going to the lower (the judge was not sure). Any judgement that failed makes
the answer's grade fail too: a majority of the judgements that could be read would be a guess at
the ones that could not.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from pipeline.core.config import JudgeConfig

MAX_SHOWN = 80  # characters of an unreadable reply quoted in its error
_LEAD = r"^[\s*_`\"'#>\[(]*"  # markup a reply may put before its verdict
_NUMBER = r"[-+]?\d+(?:\.\d+)?"


@dataclass(frozen=True)
class Verdict:
    """One judgement read: its grade in [0, 1] and the word or number it came from, with its reason; or an error."""

    grade: Optional[float]
    said: Optional[str]  # the grade word, or the number, as the judge wrote it
    reason: str
    error: Optional[str] = None

    @property
    def readable(self) -> bool:
        return self.error is None


def read_verdict(reply: str, config: JudgeConfig) -> Verdict:
    """The verdict in a judge's reply, as `config.verdict` says to read it."""
    if config.verdict == "json":
        return _read_json(reply, config)
    if config.verdict == "scale":
        match = re.match(_LEAD + f"({_NUMBER})", reply) or re.search(rf"\bscore\s*[:=]\s*({_NUMBER})", reply, re.I)
        if match is None:
            return _unreadable(reply, f"no number from {config.scale_min:g} to {config.scale_max:g}")
        return _scaled(match.group(1), _rest(reply, match), config, reply)
    grades = {word.lower(): value for word, value in config.grades.items()}
    match = re.match(_LEAD + r"(\w+)", reply)
    if match is None or match.group(1).lower() not in grades:
        match = re.search(r"\b(?:grade|verdict)\s*[:=]\s*[*_`\"']*(\w+)", reply, re.I)
    if match is None or match.group(1).lower() not in grades:
        return _unreadable(reply, "no grade word (" + ", ".join(config.grades) + ")")
    word = match.group(1).lower()
    return Verdict(float(grades[word]), word, _rest(reply, match))


def _read_json(reply: str, config: JudgeConfig) -> Verdict:
    start = reply.find("{")
    try:
        data, _ = json.JSONDecoder().raw_decode(reply[start:]) if start >= 0 else (None, 0)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or config.grade_key not in data:
        return _unreadable(reply, f"no JSON object with {config.grade_key!r}")
    value, reason = data[config.grade_key], str(data.get(config.reason_key, "") or "")
    grades = {word.lower(): grade for word, grade in config.grades.items()}
    if isinstance(value, str) and value.strip().lower() in grades:
        return Verdict(float(grades[value.strip().lower()]), value.strip().lower(), reason)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool) and re.fullmatch(_NUMBER, str(value).strip()):
        return _scaled(str(value).strip(), reason, config, reply)
    return _unreadable(reply, f"{config.grade_key}={value!r} is neither a grade word nor a number")


def _scaled(number: str, reason: str, config: JudgeConfig, reply: str) -> Verdict:
    value = float(number)
    if not config.scale_min <= value <= config.scale_max:
        return _unreadable(reply, f"{number} is off the scale {config.scale_min:g} to {config.scale_max:g}")
    return Verdict((value - config.scale_min) / (config.scale_max - config.scale_min), number, reason)


def _rest(reply: str, match: re.Match) -> str:
    """The reason: the reply without its verdict, and without the separator after it."""
    rest = (reply[:match.start()] + reply[match.end():]) if match.start() > 0 else reply[match.end():]
    return re.sub(r"^[\s*_`\"')\]]*[:.\-–—,]?\s*", "", rest).strip()


def _unreadable(reply: str, what: str) -> Verdict:
    shown = reply if len(reply) <= MAX_SHOWN else reply[:MAX_SHOWN] + "..."
    return Verdict(None, None, reply.strip(), f"unreadable verdict: {what} in {shown!r}")


def majority(verdicts: list[Verdict]) -> Verdict:
    """One verdict from several judgements of one answer (see the module's docstring)."""
    failed = [v for v in verdicts if not v.readable]
    if failed:
        return Verdict(None, None, failed[0].reason, failed[0].error if len(verdicts) == 1 else
                       f"{len(failed)} of {len(verdicts)} judgements failed; the first: {failed[0].error}")
    counts = Counter(v.grade for v in verdicts)
    top = max(counts.values())
    grade = min(g for g, n in counts.items() if n == top)
    chosen = next(v for v in verdicts if v.grade == grade)
    return Verdict(grade, chosen.said, chosen.reason)


def as_dict(verdict: Verdict) -> dict[str, Any]:
    return {"grade": verdict.grade, "said": verdict.said, "reason": verdict.reason, "error": verdict.error}
