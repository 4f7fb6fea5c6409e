"""A scripted backend for tests of the stages and the tool loop: no model, no torch, no server.

Each request is answered from a script: a list of replies taken in order (one per request, across
calls), or a function of the request. A reply is a string or a `Reply` (text, tool calls, or an
error). Without a script the fake answers "you said: <the last message>" greedily and, when sampling,
answers with words drawn from the request's own seed: the same seed gives the same text whatever the batch.

It keeps the contract the way a real backend does (tests/test_backends.py runs the same checks on
it): tokens are whitespace-separated words, a stop string cuts the text (finish "stop"),
max_new_tokens cuts it too (finish "length"), tool calls come back only when tools were offered
(finish "tool"), a reply with `error` (or a script that raises) becomes an error Completion, and a
request whose prompt leaves no room for max_new_tokens in `context_length` fails the same way.
Every batch it was given is kept in `batches`, for tests to look at.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence, Union

from pipeline.backends.base import Backend, BackendOption, BackendPlan, Capabilities, Completion, Identity, Request
from pipeline.core.records import ToolCall
from pipeline.core.streaming import StreamSink

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")  # what sampling draws from
_TOKEN = re.compile(r"\S+\s*|\s+")  # a token: a word and the space after it, so tokens join back into the text


@dataclass
class Reply:
    """What the script answers one request with."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: Optional[str] = None  # the request fails with this message
    unavailable: bool = False  # ... because the backend is gone (a server that stopped accepting connections)


# a list of replies, or a function of the request (returning None leaves that request to the fake's own answer)
Script = Union[Sequence[Union[str, Reply]], Callable[[Request], Union[str, Reply, None]]]


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, script: Optional[Script] = None, *, model: str = "fake-model", batch_size: int = 4,
                 context_length: Optional[int] = None, seconds_per_token: float = 0.0) -> None:
        self.capabilities = Capabilities(tools=True, per_request_seed=True, streaming=True)
        self.batch_size = batch_size
        self.context_length = context_length
        self.model = model
        self.seconds_per_token = seconds_per_token  # simulated decoding time, so latencies are not all zero
        self._script = script
        self._replies: Optional[Iterator[Union[str, Reply]]] = (
            iter(script) if script is not None and not callable(script) else None)
        self.loaded = False
        self.closed = False
        self.batches: list[list[Request]] = []

    def identity(self) -> Identity:
        return Identity(backend=self.name, model=self.model)

    def cache_identity(self) -> Optional[dict[str, str]]:
        return {"backend": self.name, "model": self.model}

    def plan(self, requests: Sequence[Request]) -> BackendPlan:
        kind = "none" if self._script is None else "a function" if callable(self._script) else "a list"
        return BackendPlan(identity=self.identity(), capabilities=self.capabilities,
                           options=[BackendOption("script", kind, "given by the test that built this backend")],
                           context_length=self.context_length, prompt_tokens=self.count_tokens(requests),
                           token_source="tokenizer", checks=["nothing to check: a scripted backend"])

    def load(self) -> None:
        self.loaded = True

    def close(self) -> None:
        self.closed = True

    def count_tokens(self, requests: Sequence[Request]) -> list[int]:
        return [sum(len(tokens(m.content)) for m in request.messages) for request in requests]

    def generate(self, requests: Sequence[Request], sink: Optional[StreamSink] = None) -> list[Completion]:
        if not self.loaded or self.closed:
            raise RuntimeError("the fake backend generates only between load() and close()")
        self.batches.append(list(requests))
        started = time.perf_counter()
        completions = []
        for row, (request, prompt_tokens) in enumerate(zip(requests, self.count_tokens(requests))):
            completion = self._one(request, prompt_tokens, started)
            if sink is not None and not completion.failed:
                if getattr(sink, "streams_text", True):
                    for token in tokens(completion.text):
                        sink.on_text(row, token)
                sink.on_complete(row, completion.text)
            completions.append(completion)
        return completions

    def _one(self, request: Request, prompt_tokens: int, started: float) -> Completion:
        if self.context_length is not None and prompt_tokens + request.max_new_tokens > self.context_length:
            return Completion(prompt_tokens=prompt_tokens, finish_reason="error",
                              error=f"{prompt_tokens} prompt tokens + max_new_tokens={request.max_new_tokens} do not "
                                    f"fit the context of {self.context_length} tokens")
        try:
            reply = self._reply(request)
        except Exception as error:  # a script that fails is a request that fails
            return Completion(prompt_tokens=prompt_tokens, finish_reason="error",
                              error=f"{type(error).__name__}: {error}")
        if reply.error is not None:
            return Completion(prompt_tokens=prompt_tokens, finish_reason="error", error=reply.error,
                              unavailable=reply.unavailable)
        text, finish = reply.text, "stop"
        cut = min((text.find(s) for s in request.stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        words = tokens(text)
        if len(words) > request.max_new_tokens:
            text, finish = "".join(words[:request.max_new_tokens]).rstrip(), "length"
        calls = list(reply.tool_calls) if request.tools and finish != "length" else []
        if calls:
            finish = "tool"
        count = len(tokens(text)) + len(calls)
        ttft = time.perf_counter() - started + self.seconds_per_token
        if self.seconds_per_token:
            time.sleep(self.seconds_per_token * max(1, count))
        return Completion(text=text, tool_calls=calls, prompt_tokens=prompt_tokens, completion_tokens=count,
                          finish_reason=finish, ttft_s=ttft, latency_s=max(ttft, time.perf_counter() - started))

    def _reply(self, request: Request) -> Reply:
        reply: Union[str, Reply, None] = None
        if callable(self._script):
            reply = self._script(request)
        elif self._replies is not None:
            reply = next(self._replies, Reply(error="the script has no more replies"))
        if reply is None:  # no script, or one that leaves this request to the fake's own answer
            return self._reply_unscripted(request)
        return Reply(reply) if isinstance(reply, str) else reply

    @staticmethod
    def _reply_unscripted(request: Request) -> Reply:
        if request.temperature > 0:
            draw = random.Random(request.seed)  # the request's own stream: its batch does not matter
            return Reply(" ".join(draw.choice(WORDS) for _ in range(request.max_new_tokens)))
        return Reply(f"you said: {request.messages[-1].content if request.messages else ''}")
