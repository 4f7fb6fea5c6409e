"""Inside `model.generate`: sampling that is reproducible per sample, and per-row timing and streaming.

transformers samples a whole batch from one global random stream, so a sample's output depends
on which other samples share its batch. `PerRowSampler` instead draws each row's token from that
row's own `torch.Generator`, seeded with its request's seed (pipeline.core.streaming.sample_seed: from the
generation seed, sample id and sample index): the same seed
and sample give the same output whatever the batch size or order. It runs as the last logits
processor with generate in greedy mode, applying temperature, top-k, top-p and min-p itself, then
leaving only the drawn token. Limit: a batch pads prompts to a common length, and padded matrix
products can differ in the last bits between batch shapes; on CPU in float32 this has not changed
a token in our tests, in half precision on GPUs it can, rarely.

`GenerationObserver` notes when each decoding step starts: from that, each row's time to first
token (the end of the prefill, shared by the batch) and the moment it ended; and it passes the text
of each new token to an optional `StreamSink`. Neither decides what to generate.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

from pipeline.core.streaming import StreamSink


class PerRowSampler:
    """A logits processor that samples each row with its own generator and leaves only that token."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_k: Optional[int], top_p: Optional[float],
                 min_p: Optional[float], device: Any) -> None:
        import torch
        from transformers.generation.logits_process import (
            MinPLogitsWarper,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.generators = []
        for seed in seeds:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
            self.generators.append(generator)
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        if min_p:
            self.warpers.append(MinPLogitsWarper(min_p))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probabilities = torch.softmax(scores.float(), dim=-1)
        chosen = torch.stack([torch.multinomial(probabilities[row], 1, generator=generator)[0]
                              for row, generator in enumerate(self.generators)])
        only = torch.full_like(scores, float("-inf"))
        only.scatter_(1, chosen.unsqueeze(1), 0.0)
        return only


class GenerationObserver:
    """A logits processor that changes nothing: it notes when each step starts and streams text.

    Step i's scores choose the i-th new token, so the time of the first call is every row's time to
    first token, and a row that ended with its n-th token ended when step n+1 began (or when
    generate returned). Rows are only looked at when a sink wants their text."""

    def __init__(self, prompt_length: int, started: float, tokenizer: Any = None,
                 sink: Optional[StreamSink] = None) -> None:
        self.prompt_length = prompt_length
        self.started = started
        self.step_times: list[float] = []
        self.tokenizer = tokenizer
        wants_text = sink is not None and getattr(sink, "streams_text", True)  # a sink that does not say wants it
        self.sink = sink if wants_text else None  # None: no per-step decoding
        self._texts: dict[int, str] = {}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.step_times.append(time.perf_counter() - self.started)
        if self.sink is not None and input_ids.shape[1] > self.prompt_length:
            for row, tokens in enumerate(input_ids[:, self.prompt_length:].tolist()):
                self._stream(row, tokens)
        return scores

    def _stream(self, row: int, tokens: list[int]) -> None:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        before = self._texts.get(row, "")
        if len(text) > len(before) and text.startswith(before) and not text.endswith("\ufffd"):
            self.sink.on_text(row, text[len(before):])  # whole characters only
            self._texts[row] = text

    def streamed(self, row: int) -> str:
        return self._texts.get(row, "")

    def ttft(self, total_s: float) -> float:
        return self.step_times[0] if self.step_times else total_s

    def latency(self, new_tokens: int, total_s: float) -> float:
        """When a row that produced `new_tokens` tokens (its end token included) was done."""
        return self.step_times[new_tokens] if new_tokens < len(self.step_times) else total_s
