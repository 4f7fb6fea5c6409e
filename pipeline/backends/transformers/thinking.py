"""Thinking on the in-process model: the budget as a logits processor, and token counts of reasoning and answer.

`ThinkingBudget` watches each row's tokens as they are generated. After the open tag (or from the
first token, when the prompt opened the block) it counts reasoning tokens; at the budget it forces
the wrap-up text and the closing tag, token by token, so the model's own reasoning is exactly N
tokens; after the closing tag it counts answer tokens and forces the end of turn at the answer's
limit (`generation.max_new_tokens` counts answer tokens). A row it cut there is reported, so its
finish reason is `length`.

`split_ids` reads a finished row's tokens into reasoning and answer counts. Rows are numbered as in
the batch. Knows nothing of requests or transcripts; the text is split by pipeline.core.reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

BEFORE, THINKING, FORCING, ANSWER, DONE = "before", "thinking", "forcing", "answer", "done"


@dataclass
class RowState:
    """Where one row is: before any thinking, inside it (with its count), forcing the close, answering, done."""

    phase: str = BEFORE
    reasoning: int = 0  # the model's own reasoning tokens so far (forced ones not counted)
    answer: int = 0
    queue: list[int] = field(default_factory=list)  # tokens still to force
    cut: bool = False  # the answer reached its limit: the end of turn was forced


@dataclass(frozen=True)
class ThinkingTokens:
    """The token ids the processor needs: the tags (the close tag may take several tokens) and the end of turn."""

    open_id: Optional[int]
    close_ids: tuple[int, ...]
    wrapup_ids: tuple[int, ...]
    end_ids: frozenset[int]


def thinking_tokens(tokenizer: Any, markers: Any, wrapup: str, end_ids: set[int]) -> Optional[ThinkingTokens]:
    """The ids of `markers`' tags in this tokenizer; None unless the open tag is one token (then the
    output's tokens cannot be watched for it and only the text is split)."""
    if markers is None or markers.format != "tags":
        return None
    open_ids = tokenizer(markers.open, add_special_tokens=False)["input_ids"]
    close_ids = tokenizer(markers.close, add_special_tokens=False)["input_ids"]
    if len(open_ids) != 1 or not close_ids:
        return None
    wrapup_ids = tokenizer(wrapup, add_special_tokens=False)["input_ids"] if wrapup else []
    return ThinkingTokens(open_ids[0], tuple(close_ids), tuple(wrapup_ids), frozenset(end_ids))


class ThinkingBudget:
    """A logits processor: thinking closed after `budget` reasoning tokens, the answer ended at `answer_limit`."""

    def __init__(self, tokens: ThinkingTokens, budget: Optional[int], answer_limit: int, prompt_length: int,
                 states: list[RowState]) -> None:
        self.tokens, self.budget, self.answer_limit = tokens, budget, answer_limit
        self.prompt_length = prompt_length
        self.states = states

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        generated = input_ids.shape[1] - self.prompt_length
        for row, state in enumerate(self.states):
            if generated > 0:
                self._saw(state, input_ids[row].tolist(), generated)
            forced = self._next_forced(state)
            if forced is not None:
                scores[row, :] = float("-inf")
                scores[row, forced] = 0.0
        return scores

    def _saw(self, state: RowState, row: list[int], generated: int) -> None:
        token = row[-1]
        if state.phase == DONE:
            return
        if token in self.tokens.end_ids:
            state.phase = DONE
            return
        if state.phase == BEFORE:
            if token == self.tokens.open_id:
                state.phase = THINKING
            else:
                state.phase, state.answer = ANSWER, 1
        elif state.phase == THINKING:
            close = list(self.tokens.close_ids)
            if row[-len(close):] == close and generated >= 1:
                state.phase = ANSWER
            elif len(close) == 1 or not _partial_close(row, close):
                state.reasoning += 1
        elif state.phase == FORCING:
            state.queue.pop(0)
            if not state.queue:
                state.phase = ANSWER
        elif state.phase == ANSWER:
            state.answer += 1

    def _next_forced(self, state: RowState) -> Optional[int]:
        if state.phase == THINKING and self.budget is not None and state.reasoning >= self.budget:
            state.phase = FORCING
            state.queue = list(self.tokens.wrapup_ids) + list(self.tokens.close_ids)
        if state.phase == FORCING:
            return state.queue[0]
        if state.phase == ANSWER and state.answer >= self.answer_limit:
            state.cut = True
            return min(self.tokens.end_ids)
        return None


def _partial_close(row: list[int], close: list[int]) -> bool:
    """Whether the row ends with the beginning of a several-token close tag (not reasoning, if it completes)."""
    return any(row[-size:] == close[:size] for size in range(1, len(close)))


@dataclass
class TokenSplit:
    reasoning_tokens: int
    answer_tokens: int
    opened: bool
    closed: bool


def split_ids(ids: list[int], tokens: ThinkingTokens, starts_in_thinking: bool) -> TokenSplit:
    """Reasoning tokens (the tags excluded, forced wrap-up included) and answer tokens of one generated row
    (cut at its end of turn, which is not counted)."""
    close = list(tokens.close_ids)
    start = 0
    opened = starts_in_thinking
    if not opened and ids and ids[0] == tokens.open_id:
        opened, start = True, 1
    if not opened:
        return TokenSplit(0, len(ids), False, False)
    for at in range(start, len(ids) - len(close) + 1):
        if ids[at:at + len(close)] == close:
            return TokenSplit(at - start, len(ids) - at - len(close), True, True)
    return TokenSplit(len(ids) - start, 0, True, False)

