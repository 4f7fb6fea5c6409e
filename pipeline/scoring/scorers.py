"""Scores for a response against its reference answer, as `dataset.scorer` chooses.

Built-ins (each 1.0 or 0.0, None for a sample without a reference):
- exact_match: the texts are equal after the normalisation options (strip, ignore_case,
  collapse_whitespace, ignore_punctuation);
- contains: the normalised reference occurs in the normalised response;
- regex: `pattern` is found in the response; with a capturing group, the group's text must also
  equal the reference after normalisation (`Answer: *(\\S+)`);
- numeric: the response's last number (or the number in `pattern`'s first group) is within
  `abs_tol` or `rel_tol` x |reference| of the reference's number.
A user scorer (`_target_`) is any function(response, reference, **options) returning a number, a
bool or None (not scored); it is called for samples without a reference too.

`build_scorer` checks everything that can be checked before weights load (the function imports,
takes these arguments; numeric references are numbers). Reading transcripts is not done here.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pipeline.core.imports import import_function
from pipeline.core.config import ScorerConfig
from pipeline.core.errors import UserError
from pipeline.core.records import Sample

# a signed number with optional thousands separators, decimals and exponent: -1,234.5e3
NUMBER = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Scorer:
    """A configured scorer: call it with (response, reference) for a score or None."""

    label: str  # the built-in's name or the user function's dotted path
    function: Callable[[str, Optional[str]], Any]
    user: bool = False  # a user function: called without a reference too, its result checked

    def __call__(self, response: str, reference: Optional[str]) -> Optional[float]:
        if not self.user:
            return None if reference is None else self.function(response, reference)
        value = self.function(response, reference)
        if value is None:
            return None
        if not isinstance(value, numbers.Real) or math.isnan(value):  # bools, ints, floats, numpy numbers
            raise UserError(f"dataset.scorer._target_={self.label} returned {value!r} for response {response!r}; "
                            "a scorer returns a number, a bool or None")
        return float(value)


def build_scorer(config: ScorerConfig) -> Scorer:
    """The scorer the config describes; a UserError when a user function cannot be imported or called so."""
    if config._target_ is not None:
        function = import_function(config._target_, "dataset.scorer._target_")
        try:
            inspect.signature(function).bind("response", "reference", **config.options)
        except TypeError as error:
            raise UserError(f"dataset.scorer._target_={config._target_}: cannot be called as "
                            f"{function.__name__}(response, reference"
                            f"{''.join(f', {key}=...' for key in config.options)}): {error}") from None
        except ValueError:  # no signature to inspect (a builtin): let the call decide
            pass
        return Scorer(config._target_, lambda response, reference: function(response, reference, **config.options),
                      user=True)
    normal = functools.partial(normalise, config=config)
    if config.name == "exact_match":
        return Scorer(config.name, lambda response, reference: float(normal(response) == normal(reference)))
    if config.name == "contains":
        return Scorer(config.name, lambda response, reference: float(normal(reference) in normal(response)))
    pattern = re.compile(config.pattern) if config.pattern else None
    if config.name == "regex":
        return Scorer(config.name, lambda response, reference: regex_score(pattern, response, reference, normal))
    return Scorer(config.name, lambda response, reference: numeric_score(
        response, reference, config.abs_tol, config.rel_tol, pattern))


def sample_references(samples: list[Sample]) -> list[tuple[str, Optional[str]]]:
    """(record id, reference) of every answer the samples ask for, scripted turns included."""
    return [(s.id, s.reference) for s in samples] + [
        (f"{s.id}#{i}", turn.reference) for s in samples for i, turn in enumerate(s.turns)]


def check_scorer(config: ScorerConfig, references: list[tuple[str, Optional[str]]]) -> Scorer:
    """The scorer, checked before anything runs against the (id, reference) pairs it will meet.

    A UserError when a user function does not import or take (response, reference), or when the
    numeric scorer meets a reference that is not a number (named by its id)."""
    scorer = build_scorer(config)
    if scorer.label == "numeric":
        for sample_id, reference in references:
            if reference is not None and parse_number(reference) is None:
                raise UserError(f"sample {sample_id!r}: reference {reference!r} is not a number, which "
                                "dataset.scorer.name=numeric needs; use another scorer or fix the reference")
    return scorer


def normalise(text: str, config: ScorerConfig) -> str:
    if config.ignore_punctuation:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if config.collapse_whitespace:
        text = " ".join(text.split())
    if config.ignore_case:
        text = text.casefold()
    return text.strip() if config.strip else text


def regex_score(pattern: re.Pattern, response: str, reference: str, normal: Callable[[str], str]) -> float:
    match = pattern.search(response)
    if match is None:
        return 0.0
    if pattern.groups == 0:
        return 1.0
    return float(match.group(1) is not None and normal(match.group(1)) == normal(reference))


def numeric_score(response: str, reference: str, abs_tol: float, rel_tol: float,
                  pattern: Optional[re.Pattern] = None) -> float:
    expected = parse_number(reference)
    if pattern is not None:
        match = pattern.search(response)
        if match is None:
            return 0.0
        response = match.group(1) if pattern.groups else match.group(0)
    answer = last_number(response or "")
    if answer is None or expected is None:
        return 0.0
    return float(math.isclose(answer, expected, rel_tol=rel_tol, abs_tol=abs_tol))


def last_number(text: str) -> Optional[float]:
    """The last number written in the text ("so 12 + 30 = 42." -> 42.0), or None."""
    numbers = [m.group(0) for m in NUMBER.finditer(text) if any(ch.isdigit() for ch in m.group(0))]
    return _to_float(numbers[-1]) if numbers else None


def parse_number(text: str) -> Optional[float]:
    """The number a whole reference states ("1,234", " -0.5 ", "3e8"), or None when it is not just a number."""
    match = NUMBER.fullmatch(text.strip())
    return _to_float(match.group(0)) if match and any(ch.isdigit() for ch in text) else None


def _to_float(text: str) -> Optional[float]:
    try:
        return float(text.replace(",", "").replace("−", "-"))
    except ValueError:
        return None
