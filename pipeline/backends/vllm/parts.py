"""Answers generated in parts on vLLM: a thinking budget, the forced close, and continuations of cut answers.

vLLM's offline engine has no per-request logits processor to force the closing tag at the budget (the
transformers backend's ThinkingBudget), so the answer is made of parts, each a prompt continuing the text so
far, exactly as the server backend makes it through /v1/completions (pipeline.backends.openai.budgeted: the
thinking up to the budget and stopped at the closing tag, the wrap-up and the tag appended, then the answer
up to max_new_tokens, continued where generation.continue_on_length allows). That logic is reused as it is:
each request runs as one coroutine of it, and whenever every unfinished request waits for its next part, the
waiting parts go to vLLM together in one `llm.generate` call, so a batch stays one batch part after part.

A part's prompt is text (the rendered prompt and what was written so far), encoded here with the model's
tokenizer as the first prompt was: the continuation is re-read from text, as a server reads it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pipeline.backends.base import Request
from pipeline.backends.openai import budgeted

if TYPE_CHECKING:
    from pipeline.backends.vllm.backend import Output, VllmBackend


@dataclass
class _Waiting:
    """One part asked for and not yet generated."""

    ids: list[int]
    params: Any  # SamplingParams
    future: "asyncio.Future[budgeted.Part]"


def generate_in_parts(backend: "VllmBackend", requests: Sequence[Request], prompts: Sequence[list[int]]) -> list["Output"]:
    """One Output per request, each made of its parts; every round of parts is one llm.generate call."""
    return asyncio.run(_all(backend, list(requests), list(prompts))) if requests else []


async def _all(backend: "VllmBackend", requests: list[Request], prompts: list[list[int]]) -> list["Output"]:
    from pipeline.backends.vllm.backend import Output

    thinking = backend.thinking
    markers = thinking.reading_markers
    thinks = backend.thinks
    count = (lambda text: len(backend._encode(text, False)))  # noqa: E731
    sizes = budgeted.Sizes(open=count(markers.open) if thinks else 0, close=count(markers.close) if thinks else 0,
                           wrapup=count(thinking.wrapup) if thinking.wrapup else 0, count=count)
    context = backend.context_length
    waiting: list[_Waiting] = []
    first: dict[int, float] = {}  # request -> when its first part was generated
    started = _now()

    def asker(row: int, request: Request, ids: list[int]) -> budgeted.Complete:
        async def complete(text: str, max_tokens: Optional[int], stop: list[str]) -> budgeted.Part:
            # the first part is the prompt as planned (its tokens, possibly cut from the left); later ones continue it
            part_ids = ids if text == prompts_text[row] else backend._encode(text)
            if max_tokens is None and context:
                max_tokens = max(1, context - len(part_ids))
            future: asyncio.Future[budgeted.Part] = asyncio.get_running_loop().create_future()
            waiting.append(_Waiting(part_ids, backend.sampling(request, max_tokens, stop), future))
            part = await future
            first.setdefault(row, _now())
            return part
        return complete

    prompts_text = [backend._render(request) for request in requests]
    tasks = [asyncio.ensure_future(budgeted.generate(
        prompts_text[row], asker(row, request, prompts[row]), markers=markers if thinks else None, thinks=thinks,
        sizes=sizes, budget=thinking.budget, wrapup=thinking.wrapup, answer_limit=request.max_new_tokens,
        continue_on_length=thinking.continue_on_length, stops=request.stop,
        room=context - len(prompts[row]) if context else None)) for row, request in enumerate(requests)]
    while not all(task.done() for task in tasks):
        if len(waiting) < sum(not task.done() for task in tasks):
            await asyncio.sleep(0)  # some request is still on its way to its next part
            continue
        batch, waiting[:] = list(waiting), []
        outputs, _, _ = backend.run([item.ids for item in batch], [item.params for item in batch])
        for item, output in zip(batch, outputs):
            generated = output.outputs[0]
            finish = "length" if generated.finish_reason == "length" else "stop"
            stop_reason = generated.stop_reason if isinstance(generated.stop_reason, str) else None
            item.future.set_result(budgeted.Part(generated.text, len(generated.token_ids), finish, stop_reason,
                                                 len(item.ids)))
    ended = _now()
    results = []
    for row, task in enumerate(tasks):
        made = task.result()
        results.append(Output(made.text, made.completion_tokens, made.finish_reason, first.get(row, ended) - started,
                              ended - started,
                              reasoning=made.reasoning, reasoning_truncated=made.reasoning_truncated,
                              reasoning_tokens=made.reasoning_tokens, answer_tokens=made.answer_tokens,
                              continuations=made.continuations))
    return results


def _now() -> float:
    import time

    return time.monotonic()
