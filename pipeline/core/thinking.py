"""The plan's thinking decision: how generation.thinking / reasoning_effort / thinking_budget map onto a model.

From what the chat template and special tokens say (pipeline.core.reasoning.thinking_support), decide
the template variables that switch thinking (Qwen3's ``enable_thinking``, gpt-oss's
``reasoning_effort``), the markers the output is read with, and the budget; refuse in one line what
the model cannot do (``thinking=on`` for a model that cannot think, ``off`` for one that always
thinks, ``reasoning_effort`` for a template that does not read it). Pure: the backends apply it.

How the limits combine: ``max_new_tokens`` counts answer tokens; thinking has its own limit, the
budget (N reasoning tokens, then the wrap-up text and the closing tag are forced); without a
budget thinking may run until the context is full.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from pipeline.core.config import GenerationConfig
from pipeline.core.errors import UserError
from pipeline.core.reasoning import Markers, ThinkingSupport


@dataclass
class ThinkingPlan:
    """What the run does about thinking, decided before anything loads."""

    mode: str = "auto"  # generation.thinking
    can_think: bool = False
    template_args: dict[str, Any] = field(default_factory=dict)  # chat template variables that switch thinking
    markers: Optional[dict[str, str]] = None  # Markers as a dict (format, open, close); None: no thinking markers
    budget: Optional[int] = None  # reasoning tokens per answer
    wrapup: str = ""
    continue_on_length: int = 0
    reasoning_effort: Optional[str] = None
    found: str = ""  # what the template and tokens say, in words
    how: str = ""  # how thinking is switched and bounded in this run, in words

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reading_markers(self) -> Optional[Markers]:
        return Markers(**self.markers) if self.markers else None

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> "ThinkingPlan":
        return cls(**data) if data else cls()


def plan_thinking(generation: GenerationConfig, support: ThinkingSupport, model: str,
                  template_args: Optional[dict[str, Any]] = None) -> ThinkingPlan:
    """The thinking plan for this model, or a UserError naming the setting that cannot work."""
    given = dict(template_args or {})
    mode = generation.thinking
    effort = generation.reasoning_effort
    if mode != "auto" and not support.can_think:
        raise UserError(f"generation.thinking={mode}: model {model!r} cannot think ({support.describe()}); "
                        "allowed: auto")
    if effort is not None and support.switch != "reasoning_effort":
        raise UserError(f"generation.reasoning_effort={effort}: the chat template of {model!r} does not read "
                        "reasoning_effort; allowed: null" + ("; use generation.thinking=on/off"
                                                            if support.switch == "enable_thinking" else ""))
    args: dict[str, Any] = {}
    how: list[str] = []
    if support.switch == "enable_thinking" and mode != "auto":
        args["enable_thinking"] = mode == "on"
        how.append(f"enable_thinking={'true' if mode == 'on' else 'false'} in the chat template")
    elif support.switch == "reasoning_effort":
        if mode == "off":
            raise UserError(f"generation.thinking=off: model {model!r} always thinks (its template grades thinking "
                            "by reasoning_effort); allowed: auto, on; set generation.reasoning_effort=low for less")
        if effort is not None:
            args["reasoning_effort"] = effort
            how.append(f"reasoning_effort={effort} in the chat template")
    elif mode == "off":
        raise UserError(f"generation.thinking=off: the chat template of {model!r} has no switch for thinking "
                        "(no enable_thinking or reasoning_effort); allowed: auto, on")
    for key, value in args.items():
        if key in given and given[key] != value:
            raise UserError(f"session.template_args.{key}={given[key]} contradicts generation.thinking={mode}"
                            f"{'' if effort is None else f' / reasoning_effort={effort}'}; set only one of them")
    if not how:
        how.append("the template's default (" + ("thinking" if support.default_on else "no thinking") + ")"
                   if support.can_think else "the model does not think")
    budget = generation.thinking_budget
    if budget is not None and support.can_think and mode != "off":
        how.append(f"at most {budget} reasoning tokens per answer, then "
                   + (f"{generation.thinking_wrapup!r} and " if generation.thinking_wrapup else "")
                   + f"{support.markers.close if support.markers and support.markers.format == 'tags' else 'the end of thinking'}"
                   " forced")
    if generation.continue_on_length:
        how.append(f"an answer cut by max_new_tokens is continued up to {generation.continue_on_length} time(s)")
    markers = support.markers
    return ThinkingPlan(mode=mode, can_think=support.can_think, template_args=args,
                        markers=None if markers is None else asdict(markers), budget=budget,
                        wrapup=generation.thinking_wrapup, continue_on_length=generation.continue_on_length,
                        reasoning_effort=effort, found=support.describe(), how="; ".join(how))


def budget_warnings(generation: GenerationConfig, plan: ThinkingPlan) -> list[str]:
    """Settings that will have no effect, said in the plan rather than refused."""
    warnings = []
    if generation.thinking_budget is not None and not plan.can_think:
        warnings.append(f"generation.thinking_budget={generation.thinking_budget} has no effect: the model does not think")
    elif generation.thinking_budget is not None and plan.mode == "off":
        warnings.append(f"generation.thinking_budget={generation.thinking_budget} has no effect: thinking is off")
    return warnings


@dataclass(frozen=True)
class NewTokens:
    """The most tokens one answer may add to its prompt, and how that adds up in words (for the plan's context
    check and the KV-cache estimate)."""

    total: int
    how: str  # "generation.max_new_tokens=8", or the sum with the thinking's and the continuations' parts


def new_tokens(generation: GenerationConfig, plan: ThinkingPlan, tokens_of: Callable[[str], int]) -> NewTokens:
    """The worst case of one answer: with a budget, the thinking (open tag, N reasoning tokens, the wrap-up, the
    close tag) comes on top of the answer's max_new_tokens; each continuation adds max_new_tokens more.
    `tokens_of` counts a text's tokens in the model's tokenizer. Thinking without a budget is not bounded
    here (it may run until the context is full), so it adds nothing."""
    max_new, parts = generation.max_new_tokens, 1 + generation.continue_on_length
    markers = plan.reading_markers
    thinks = plan.can_think and plan.mode != "off" and markers is not None and markers.format == "tags"
    budget = plan.budget if thinks else None
    if budget is None and parts == 1:
        return NewTokens(max_new, f"generation.max_new_tokens={max_new}")
    terms, total = [], max_new * parts
    if budget is not None:
        tags = tokens_of(markers.open) + tokens_of(markers.close)
        wrapup = tokens_of(plan.wrapup) if plan.wrapup else 0
        total += budget + tags + wrapup
        terms.append(f"generation.thinking_budget={budget} + {tags} tag tokens"
                     + (f" + {wrapup} wrap-up tokens" if wrapup else ""))
    terms.append(f"generation.max_new_tokens={max_new}" + (f" x {parts} (continue_on_length="
                                                           f"{generation.continue_on_length})" if parts > 1 else ""))
    return NewTokens(total, f"{total} new tokens at most ({' + '.join(terms)})")
