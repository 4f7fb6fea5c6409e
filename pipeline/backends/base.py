"""The backend contract: what every backend (in-process transformers, an OpenAI-compatible server,
the scripted fake) offers the stages, and the records that cross it.

A backend says who its model is (`identity`), plans its own options with a reason each
(`plan`: token counts, the context length, the capabilities it declares), loads or connects
(`load`) and lets go (`close`), and turns a batch of requests into completions (`generate`).
Log-likelihoods are optional (`capabilities.loglikelihood`). A request that fails comes back as a
completion with `error` set and `finish_reason="error"`: the run records it and goes on (the
caller decides about fail-fast); one that failed because the backend itself is gone (`unavailable`)
stops the run instead, keeping what was written. Mistakes found while planning are `UserError`s, as everywhere.

Stages, the answering and tool loop, the transcript, scoring and tracking speak only to this
module; nothing here imports torch or an HTTP client. Compare inspect_ai's `ModelAPI.generate`
(one abstract method) and simonw/llm's `Model` (capabilities declared as attributes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from pipeline.core.records import Message, ToolCall
from pipeline.core.streaming import StreamSink

FINISH_REASONS = ("stop", "length", "tool", "error")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the plan refuses a run that needs something its backend lacks."""

    modalities: tuple[str, ...] = ("text",)  # text, image, audio
    tools: bool = False  # tool calls (native in the API, or through the chat template)
    per_request_seed: bool = False  # a request's seed decides its sampling, whatever its batch
    loglikelihood: bool = False  # log-likelihoods of continuations (multiple choice, perplexity)
    streaming: bool = False  # text arrives as it is generated (time to first token is measured, not estimated)
    thinking_switch: bool = False  # reasoning can be turned on or off per request


@dataclass(frozen=True)
class Identity:
    """Which model answers: enough to tell two runs' models apart."""

    backend: str  # transformers, openai, fake
    model: str  # a local path, or the model id the server serves
    digest: Optional[str] = None  # the weights' digest, where the backend can read the files
    endpoint: Optional[str] = None  # a server's base URL, credentials masked
    reported: dict[str, Any] = field(default_factory=dict)  # what the server says of the model (owned_by, max_model_len, ...)


@dataclass(frozen=True)
class BackendOption:
    """One choice the backend made for this run, and why."""

    name: str
    value: Any
    reason: str


@dataclass
class BackendPlan:
    """The backend's part of the run's plan, decided before anything loads or any request is sent."""

    identity: Identity
    capabilities: Capabilities
    options: list[BackendOption] = field(default_factory=list)
    context_length: Optional[int] = None  # tokens, prompt and answer together; None when unknown
    prompt_tokens: list[int] = field(default_factory=list)  # per request, in the order given to plan
    token_source: str = "tokenizer"  # tokenizer, server (its tokenize endpoint) or estimate
    checks: list[str] = field(default_factory=list)  # what was verified, in words
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Request:
    """One generation: a conversation and the settings to continue it with."""

    messages: list[Message]  # text and media parts, earlier tool calls and results
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None  # this request's own seed (honoured where capabilities.per_request_seed)
    tools: list[dict[str, Any]] = field(default_factory=list)  # JSON schemas of the tools offered
    key: str = ""  # the record it answers (sample id, turn, index): for logs and errors
    min_p: Optional[float] = None  # None: the backend's default (a server may not know it)
    repetition_penalty: Optional[float] = None  # None or 1.0: none
    sample_index: int = 0  # which of generation.num_samples completions of its prompt (part of the cache key)


@dataclass
class Completion:
    """What came back for one request; `error` set (and finish_reason "error") when it failed."""

    text: str = ""  # the answer, reasoning excluded
    reasoning: str = ""  # the model's thinking, kept apart from the answer
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # reasoning and answer together
    reasoning_tokens: int = 0
    answer_tokens: Optional[int] = None  # None: completion_tokens - reasoning_tokens
    reasoning_truncated: bool = False  # the thinking never closed: there is no answer
    continuations: int = 0  # generation.continue_on_length: how many times the answer was continued
    finish_reason: str = "stop"  # one of FINISH_REASONS
    ttft_s: float = 0.0  # time to first token
    latency_s: float = 0.0  # request sent -> last token
    truncated: bool = False  # the prompt was cut from the left to fit the context
    error: Optional[str] = None  # one line: why the request failed
    # what the conversation keeps of the answer when it called tools, if not `text` (the in-process
    # backend's text carries the calls' markup; the assistant message carries them as tool_calls)
    message_text: Optional[str] = None
    tool_problems: list[str] = field(default_factory=list)  # calls asked for that could not be read, in words
    # the request failed because the backend itself is gone (a server that no longer accepts connections, after
    # the retries), not because of this request: the run stops instead of recording an error for it and for
    # every request after it, and a resume answers it once the backend is back (pipeline.core.errors)
    unavailable: bool = False
    cached: bool = False  # read from the response cache (pipeline.backends.cache), not generated now

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass
class ChoicesRequest:
    """Continuations to score after one context: a multiple-choice question and its choices.

    The context is `messages` rendered as a prompt is (through the chat template, or the contents
    joined); each continuation is scored as the text that follows it, tokens split at the boundary
    as lm-eval splits them (the whole string encoded; the context's trailing spaces go to the continuation)."""

    messages: list[Message]
    continuations: list[str]
    key: str = ""


@dataclass
class Continuation:
    """One continuation's log-likelihood (natural log, summed over its tokens)."""

    loglikelihood: float
    is_greedy: bool  # every one of its tokens is the model's likeliest at its place
    tokens: int
    merged: bool = False  # its first token merged with the context's last: scored from the common prefix


@dataclass
class ChoicesResult:
    continuations: list[Continuation] = field(default_factory=list)
    context_tokens: int = 0
    latency_s: float = 0.0
    truncated: bool = False  # the context was cut from the left to fit the model's context
    error: Optional[str] = None
    cached: bool = False  # read from the response cache, not computed now


@dataclass
class RollingResult:
    """A text's log-likelihood, each token predicted once (the first after the model's start token)."""

    loglikelihood: float = 0.0
    tokens: int = 0
    windows: int = 0
    latency_s: float = 0.0
    error: Optional[str] = None
    cached: bool = False  # read from the response cache, not computed now


class Backend(ABC):
    """A model to generate with: planned, then loaded (or connected), used, closed.

    `plan` must not load weights or generate; `load` must happen before `generate`. A backend
    that declares a capability must honour it (the conformance suite, tests/test_backends.py,
    checks every backend the same way)."""

    name: str = ""
    capabilities: Capabilities = Capabilities()
    # how many requests one `generate` call should get at most (the caller batches by prompt length)
    batch_size: int = 1
    context_length: Optional[int] = None  # tokens, prompt and answer together; None: unknown
    # the run's effective generation settings (pipeline.core.generation_settings), when the backend was
    # built from a plan: requests are made from them; None: the config's own values
    generation: Optional[dict[str, Any]] = None

    @abstractmethod
    def plan(self, requests: Sequence[Request]) -> BackendPlan:
        """Options, token counts and checks for these requests; a UserError for what cannot work."""

    @abstractmethod
    def load(self) -> None:
        """Weights into memory, or a connection checked; a failure is the run's, not a mistake."""

    @abstractmethod
    def generate(self, requests: Sequence[Request], sink: Optional[StreamSink] = None) -> list[Completion]:
        """One completion per request, in order; a failed request is a Completion with `error`."""

    def count_tokens(self, requests: Sequence[Request]) -> list[int]:
        """Prompt tokens of each request as `generate` will send it (for batching by length and the
        context check). This default is an estimate, about four characters a token."""
        return [max(1, sum(len(m.content) for m in request.messages) // 4) for request in requests]

    def loglikelihoods(self, requests: Sequence["ChoicesRequest"]) -> list["ChoicesResult"]:
        """Each request's continuations scored after its context (only with capabilities.loglikelihood);
        a request that fails comes back with `error` set."""
        raise NotImplementedError(f"the {self.name} backend has no log-likelihoods")

    def rolling_loglikelihoods(self, texts: Sequence[str]) -> list["RollingResult"]:
        """Each text's whole log-likelihood, in windows at the model's context (only with capabilities.loglikelihood)."""
        raise NotImplementedError(f"the {self.name} backend has no log-likelihoods")

    def close(self) -> None:
        """Free the model or the connection; a closed backend is not used again."""

    def cache_identity(self) -> Optional[dict[str, Any]]:
        """What decides this backend's answers besides each request, for the response cache's key
        (pipeline.backends.cache): the model's identity (weights and files digests, or endpoint and served
        id) and the settings the backend applies to every request (dtype, thinking plan, ...); never a
        secret. None (this default): its answers are not cached, since who answers is unknown."""
        return None

    def cache_prompt(self, request: "Request | ChoicesRequest") -> Optional[str]:
        """The request as the model will read it (e.g. rendered through its chat template), when the backend
        renders it itself: the cache key then follows a changed template. None: the messages are the request."""
        return None
