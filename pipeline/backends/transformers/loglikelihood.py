"""Log-likelihoods on the in-process model: multiple-choice continuations, and rolling windows for perplexity.

Multiple choice (`score_choices`): each context is run once, and its KV cache is shared by all its
choices. A batch of contexts is left-padded (positions counted from each row's first real token),
run with the cache on, then the cache rows are repeated for each choice and the choices' tokens
(all but the last) run after it; the context's last logits score every choice's first token. This
is the same arithmetic as running context + choice from scratch for each choice (as lm-eval does),
with the context's tokens computed once instead of once per choice.

Token boundaries (`split_pair`) follow lm-eval: the context's trailing white space moves to the
continuation, the whole string is encoded, and the context's own tokens are checked to be its
prefix. Where they are not (the choice's first token merged with the context's last), that choice
is scored from scratch from the common prefix of both encodings: the tokens the model would really see.

Perplexity (`rolling_windows`, `score_rolling`): lm-eval's rolling windows at the model's context:
the first window predicts its tokens after the start token, each later window predicts the next
tokens with the window's remaining length as context, so each token is predicted exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

from pipeline.backends.base import ChoicesResult, Continuation, RollingResult


@dataclass
class Pair:
    context: list[int]
    continuation: list[int]
    merged: bool  # the context's tokens were not a prefix of the whole string's


def split_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> Pair:
    """Context and continuation tokens, split where lm-eval splits them (see the module docstring)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(context + continuation)
    alone = encode(context)
    if whole[:len(alone)] == alone and len(whole) > len(alone):
        return Pair(alone, whole[len(alone):], False)
    shared = 0
    while shared < min(len(whole), len(alone)) and whole[shared] == alone[shared]:
        shared += 1
    return Pair(whole[:shared], whole[shared:], True)


def score_choices(model: Any, pairs: Sequence[Sequence[Pair]], pad_id: int, limit: Optional[int]) -> list[ChoicesResult]:
    """One ChoicesResult per context (its pairs all share the context's tokens unless merged)."""
    import torch

    started = time.perf_counter()
    results = [ChoicesResult() for _ in pairs]
    shared_rows = []  # (sample index, context tokens, [(choice index, continuation)])
    for index, choices in enumerate(pairs):
        plain = [(c, pair.continuation) for c, pair in enumerate(choices) if not pair.merged]
        results[index].continuations = [Continuation(0.0, False, len(pair.continuation), pair.merged) for pair in choices]
        context = next((pair.context for pair in choices if not pair.merged), choices[0].context)
        if limit:  # keep the context's end: context + the longest continuation but its last token must fit
            room = limit - max(len(pair.continuation) for pair in choices) + 1
            if room < 1:
                results[index].error = (f"a choice of {max(len(p.continuation) for p in choices)} tokens does not fit "
                                        f"the model's context of {limit} tokens")
                continue
            if len(context) > room:
                context, results[index].truncated = context[-room:], True
        results[index].context_tokens = len(context)
        if plain:
            shared_rows.append((index, context, plain))
        for c, pair in enumerate(choices):
            if pair.merged:
                if not pair.context:
                    results[index].error = "a choice merges with the whole context: nothing to condition it on"
                    continue
                results[index].continuations[c] = score_from_scratch(model, pair.context, pair.continuation, limit)
                results[index].continuations[c].merged = True
    with torch.inference_mode():
        if shared_rows:
            _shared(model, shared_rows, results, pad_id)
    seconds = time.perf_counter() - started
    for result in results:
        result.latency_s = seconds
    return results


def _shared(model: Any, rows: list[tuple[int, list[int], list[tuple[int, list[int]]]]],
            results: list[ChoicesResult], pad_id: int) -> None:
    import torch

    device = model.device
    width = max(len(context) for _, context, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (_, context, _) in enumerate(rows):
        ids[row, width - len(context):] = torch.tensor(context)
        mask[row, width - len(context):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # only the last position's logits are needed: a real vocabulary's logits for every context token cost more
    # than the layers on a small model
    keep = {"logits_to_keep": 1} if "logits_to_keep" in _parameters(model) else {}
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=True, **keep)
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # scores every choice's first token
    owners = [row for row, (_, _, choices) in enumerate(rows) for _ in choices]
    conts = [cont for _, _, choices in rows for _, cont in choices]
    rest = max(len(cont) - 1 for cont in conts)
    later = None
    if rest > 0:
        cache = out.cache if "cache" in out else out.past_key_values  # transformers >= 5.2x names it cache
        select = torch.tensor(owners, device=device)
        for layer in cache.layers:
            layer.batch_select_indices(select)
        step = torch.full((len(conts), rest), pad_id, dtype=torch.long)
        step_mask = torch.zeros((len(conts), rest), dtype=torch.long)
        for r, cont in enumerate(conts):
            step[r, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
            step_mask[r, :len(cont) - 1] = 1
        lengths = mask.sum(-1)[owners]
        step_positions = lengths[:, None] + torch.arange(rest)[None, :]
        full_mask = torch.cat([mask[owners], step_mask], dim=1)
        later = model(input_ids=step.to(device), attention_mask=full_mask.to(device),
                      position_ids=step_positions.to(device), use_cache=True, **{_cache_argument(model): cache}).logits
        later = torch.log_softmax(later.float(), dim=-1)
    r = 0
    for row, (index, _, choices) in enumerate(rows):
        for c, cont in choices:
            target = torch.tensor(cont, device=device)
            scores = first[row:row + 1]
            if len(cont) > 1:
                scores = torch.cat([scores, later[r, :len(cont) - 1]], dim=0)
            picked = scores.gather(1, target[:, None]).squeeze(1)
            results[index].continuations[c] = Continuation(
                float(picked.sum()), bool((scores.argmax(-1) == target).all()), len(cont))
            r += 1


def _parameters(model: Any) -> Any:
    import inspect

    return inspect.signature(model.forward).parameters


def _cache_argument(model: Any) -> str:
    """The forward argument that takes a KV cache: cache in recent transformers, past_key_values before."""
    return "cache" if "cache" in _parameters(model) else "past_key_values"


def score_from_scratch(model: Any, context: list[int], continuation: list[int], limit: Optional[int] = None) -> Continuation:
    """One continuation after one context, the whole sequence run at once (the reference the shared path matches)."""
    import torch

    sequence = (context + continuation)[:-1]
    if limit:
        sequence = sequence[-limit:]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([sequence], device=model.device)).logits[0, -len(continuation):]
        scores = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(continuation, device=model.device)
        picked = scores.gather(1, target[:, None]).squeeze(1)
        return Continuation(float(picked.sum()), bool((scores.argmax(-1) == target).all()), len(continuation))


def rolling_windows(tokens: list[int], prefix: int, max_length: int) -> Iterator[tuple[list[int], list[int]]]:
    """(input tokens, predicted tokens) windows, lm-eval's get_rolling_token_windows with context_len=1:
    every token predicted once; score the last len(predicted) logits of each window."""
    if not tokens:
        return
    first = min(max_length, len(tokens))
    yield [prefix] + tokens[:first - 1], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        count = min(len(tokens) - predicted, max_length)
        end = predicted + count
        yield tokens[max(0, end - max_length - 1):end - 1], tokens[end - count:end]
        predicted += count


def score_rolling(model: Any, tokens: list[int], prefix: int, max_length: int) -> RollingResult:
    import torch

    started = time.perf_counter()
    total, windows = 0.0, 0
    with torch.inference_mode():
        for inputs, predicted in rolling_windows(tokens, prefix, max_length):
            logits = model(input_ids=torch.tensor([inputs], device=model.device)).logits[0, -len(predicted):]
            scores = torch.log_softmax(logits.float(), dim=-1)
            total += float(scores.gather(1, torch.tensor(predicted, device=model.device)[:, None]).sum())
            windows += 1
    return RollingResult(total, len(tokens), windows, time.perf_counter() - started)
