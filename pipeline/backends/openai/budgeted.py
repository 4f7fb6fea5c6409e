"""A thinking budget and answer continuation on a server, through the text completions API (/v1/completions).

The chat completions API always adds a generation prompt and cannot continue an assistant message,
so with `generation.thinking_budget` or `generation.continue_on_length` the conversation is rendered
here with the served model's chat template (`backend.tokenizer`, the same switch as in process) and
sent as raw text, in parts, each part continuing the text so far:

1. the thinking: capped at the budget, stopped at the closing tag. When the prompt does not open the
   block itself, a first request of the open tag's length asks whether the model opens it (a model
   that answers at once is then answering, and its answer keeps its own limit);
2. the thinking not closed at the budget: the wrap-up and the closing tag are appended here (the
   forced tokens of the in-process logits processor);
3. the answer: up to `generation.max_new_tokens` tokens; one cut by that limit is continued, up to
   `continue_on_length` times, from everything written so far.

Counts follow pipeline.backends.transformers.thinking exactly (greedy gives the same split): reasoning
tokens are the model's own tokens between the tags plus the forced wrap-up (the tags themselves
excluded); answer tokens are those after the closing tag, the end of turn excluded. Each part's count
is the server's usage (completion_tokens), less the tags and the end-of-turn token it includes.

`generate` is pure logic over a `complete(prompt, max_tokens, stop) -> Part` callable: the HTTP request
is the backend's (pipeline.backends.openai.backend). Not here: rendering the prompt, retries, tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Sequence

from pipeline.core.reasoning import Markers, opens_thinking, split_reasoning


@dataclass(frozen=True)
class Part:
    """What one /completions request gave."""

    text: str
    tokens: int  # the server's usage.completion_tokens: every token generated, a closing tag or end of turn included
    finish: str  # the server's finish_reason: stop or length
    stop_reason: Any = None  # vLLM: the stop string matched (the text then lacks it); None: the end of turn
    prompt_tokens: int = 0  # the server's usage.prompt_tokens


@dataclass(frozen=True)
class Sizes:
    """Token lengths, in the served model's tokenizer, of the texts the counts are corrected by."""

    open: int
    close: int
    wrapup: int
    count: Callable[[str], int]  # tokens of a piece of output text (no special tokens added)


@dataclass
class Budgeted:
    """One answer made of its parts, with the fields the in-process backend fills."""

    text: str = ""  # the answer alone
    reasoning: str = ""
    reasoning_truncated: bool = False
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    completion_tokens: int = 0  # every token of every part, forced ones included
    continuations: int = 0
    finish_reason: str = "stop"  # stop or length
    prompt_tokens: int = 0  # the first request's: the conversation's prompt
    requests: int = 0


Complete = Callable[[str, Optional[int], list[str]], Awaitable[Part]]


async def generate(prompt: str, complete: Complete, *, markers: Optional[Markers], thinks: bool, sizes: Sizes,
                   budget: Optional[int], wrapup: str, answer_limit: int, continue_on_length: int,
                   stops: Sequence[str] = (), room: Optional[int] = None) -> Budgeted:
    """Generate one answer in parts. `thinks`: the model may think in this run (it has tags and thinking is not
    off); `room`: tokens the context leaves after the prompt (None: unknown, the server's default applies)."""
    stops = list(stops)
    out = Budgeted()
    written = ""  # everything generated so far, tags included: the next part continues prompt + written
    starts = thinks and opens_thinking(prompt, markers)
    thinking = starts
    answer_used = 0  # answer tokens of the part under way (a model that answered at once)

    async def ask(max_tokens: Optional[int], stop: list[str]) -> Part:
        out.requests += 1
        part = await complete(prompt + written, max_tokens, stop)
        out.prompt_tokens = out.prompt_tokens or part.prompt_tokens
        out.completion_tokens += part.tokens
        return part

    if thinks and not starts:  # does the model open the block? (greedy: the first token decides)
        part = await ask(sizes.open, stops)
        written += part.text
        if part.text.startswith(markers.open):
            thinking = True
        else:  # it answers at once: its answer so far counts against the answer's limit
            answer_used = part.tokens - _end_of_turn(part, stops, sizes)
            out.answer_tokens += answer_used
            if part.finish == "stop" or _ended(part, stops, sizes):
                return _finish(out, written, markers if thinks else None, starts, "stop")
    if thinking:
        reasoning = 0
        part = None
        if budget is None or budget > 0:
            left = budget
            if left is None and room is not None:  # no budget: the thinking may fill what the context leaves
                left = max(1, room - out.completion_tokens)
            part = await ask(left, [markers.close] + stops)
            written += part.text
            reasoning = part.tokens
        closed = part is not None and (markers.close in part.text or part.stop_reason == markers.close)
        if closed:
            if markers.close not in part.text:  # a server that leaves the stop string out (vLLM)
                written += markers.close
            reasoning -= sizes.close
        elif part is None or (part.finish == "length" and budget is not None
                              and not _ended(part, stops, sizes)):  # the budget is spent: close it
            written += wrapup + markers.close
            reasoning += sizes.wrapup
            out.completion_tokens += sizes.wrapup + sizes.close
        else:  # the end of turn (or a stop string, or the context) came inside the thinking: no answer
            out.reasoning_tokens = reasoning - _end_of_turn(part, stops, sizes)
            cut = part.finish == "length" and not _ended(part, stops, sizes)
            return _finish(out, written, markers, starts, "length" if cut else "stop")
        out.reasoning_tokens = reasoning
    while True:  # the answer, and its continuations
        limit = answer_limit - answer_used
        answer_used = 0
        if limit <= 0:  # the probe's answer already reached the limit
            finish = "length"
            if out.continuations < continue_on_length:
                out.continuations += 1
                continue
        else:
            part = await ask(limit, stops)
            written += part.text
            ended = part.finish == "stop" or _ended(part, stops, sizes)
            out.answer_tokens += part.tokens - (_end_of_turn(part, stops, sizes) if ended else 0)
            finish = "stop" if ended else "length"
            if finish == "length" and out.continuations < continue_on_length and part.tokens:
                out.continuations += 1
                continue
        return _finish(out, written, markers if thinks else None, starts, finish)


def _finish(out: Budgeted, written: str, markers: Optional[Markers], starts: bool, finish: str) -> Budgeted:
    out.finish_reason = finish
    if markers is None:
        out.text = written
        return out
    split = split_reasoning(written, markers, starts)
    out.text, out.reasoning, out.reasoning_truncated = split.answer, split.reasoning, split.truncated
    return out


def _ended(part: Part, stops: Sequence[str], sizes: Sizes) -> bool:
    """Whether a part the server reports as cut by length in fact ended its turn on its last allowed token
    (`transformers serve` says `length` whenever it generated max_tokens tokens, the end of turn among them):
    the text, which leaves the end-of-turn token out, is then one token short of the count."""
    return part.finish == "length" and part.tokens > 0 and sizes.count(part.text) == part.tokens - 1


def _end_of_turn(part: Part, stops: Sequence[str], sizes: Sizes) -> int:
    """1 when the part's count includes an end-of-turn token (not text, not counted as reasoning or answer)."""
    if part.finish == "length":
        return 1 if _ended(part, stops, sizes) else 0
    if part.stop_reason is not None or any(stop and stop in part.text for stop in stops):
        return 0  # a stop string ended it: its tokens are text
    return 1 if part.tokens > 0 else 0
