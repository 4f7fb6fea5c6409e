"""The response cache: any backend wrapped so that a request answered before is read back, not generated.

`with_cache(backend, config.cache)` is how every backend a run, a sweep job or a judge uses is built
when `cache.enabled=true`; off, it returns the backend as it is. The wrapper keeps the contract:
`generate` answers the requests it has from the store (pipeline.backends.cache_store) and hands only the
others to the backend, then stores those that succeeded. Log-likelihoods (multiple choice, perplexity)
are cached the same way.

The key is a sha256 over everything that decides an answer:
- who answers: the backend's `cache_identity` (the weights' and the small files' digests, dtype,
  device kind and the thinking plan; or a server's endpoint and served id). A backend that cannot say
  (identity None) is never cached;
- the request as the model reads it: every field of `Request` but its log label `key` (messages with
  media parts by their sha256, the tools' schemas, every sampling setting, the seed and the sample
  index), and the prompt as the backend renders it (`cache_prompt`: the chat template's output), so a
  changed template misses even where the messages do not change;
- the run's effective generation settings (the backend's `generation`) but for `seed` and
  `num_samples`, which each request carries as its own seed and sample index.

Not cached: sampling without a seed that decides it (no seed, or a backend whose seed depends on the
batch: `capabilities.per_request_seed` false), a media part without a digest, failed requests and
a backend that is gone (`error`, `unavailable`). Nothing secret is in a key: identities hold masked
endpoints and header names, never keys; and only the key's hash is stored. A hit's completion is the
stored one, timings included (a tool budget spent by seconds decides as it did), with `cached` set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar

from pipeline.backends.base import (Backend, BackendPlan, Capabilities, ChoicesRequest, ChoicesResult, Completion,
                                    Continuation, Request, RollingResult)
from pipeline.core.config import CacheConfig
from pipeline.core.records import Message, ToolCall
from pipeline.core.streaming import RowSink, StreamSink

if TYPE_CHECKING:
    from pipeline.backends.cache_store import ResponseStore

log = logging.getLogger(__name__)
KEY_FORMAT = 1  # raise when what goes into a key changes meaning: every old entry then misses
PER_REQUEST = ("seed", "num_samples")  # run settings each request carries as its own seed and sample index
R = TypeVar("R")


def with_cache(backend: Backend, settings: CacheConfig, defer_load: bool = True) -> Backend:
    """The backend behind the response cache when `cache.enabled`, else the backend itself. `defer_load`: the
    model loads (or the server is asked) at the first request the cache does not have, not at `load`."""
    if not settings.enabled:
        return backend
    from pipeline.backends.cache_store import ResponseStore  # only a run with the cache on pays for diskcache

    return CachingBackend(backend, ResponseStore.open(settings), defer_load)


class CachingBackend(Backend):
    """A backend whose answers are read from the response cache where they are there (see the module)."""

    def __init__(self, inner: Backend, store: "ResponseStore", defer_load: bool = True) -> None:
        self.inner, self.store, self.defer_load = inner, store, defer_load
        self.hits = self.misses = self.uncacheable = 0
        self._load_asked = self._loaded = False
        # id(request) -> (request, its key, its stored completion or None): looked up once for count_tokens and
        # generate (a new round replaces them)
        self._known: dict[int, tuple[Request, Optional[str], Optional[Completion]]] = {}

    def __getattr__(self, name: str) -> Any:  # the wrapped backend's own attributes (runtime, load_record, ...)
        if name in ("inner", "store") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    # --- what the wrapped backend says -------------------------------------------------------------

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return self.inner.capabilities

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self.inner.batch_size

    @property
    def context_length(self) -> Optional[int]:  # type: ignore[override]
        return self.inner.context_length

    @property
    def generation(self) -> Optional[dict[str, Any]]:  # type: ignore[override]
        return self.inner.generation

    @generation.setter
    def generation(self, value: Optional[dict[str, Any]]) -> None:
        self.inner.generation = value

    def plan(self, requests: Sequence[Request]) -> BackendPlan:
        return self.inner.plan(requests)

    def load(self) -> None:
        """With `defer_load`, deferred to the first request the cache does not have: a run answered from the
        cache loads no model and asks no server (so it takes as long as reading the cache)."""
        self._load_asked = True
        if not self.defer_load:
            self._ready()

    def count_tokens(self, requests: Sequence[Request]) -> list[int]:
        """A stored answer's prompt tokens for a hit; the backend's count (after it loads) for the others."""
        self._known = {id(r): (r, *self._find(r)) for r in requests}
        missing = [r for r in requests if self._known[id(r)][2] is None]
        counted = iter(self._ready().count_tokens(missing) if missing else [])
        return [next(counted) if known is None else known.prompt_tokens
                for known in (self._known[id(r)][2] for r in requests)]

    def close(self) -> None:
        if self.hits or self.misses or self.uncacheable:
            log.info("response cache %s: %d hit(s), %d miss(es), %d not cacheable", self.store.folder, self.hits,
                     self.misses, self.uncacheable)
        self.inner.close()
        self.store.close()

    def cache_identity(self) -> Optional[dict[str, Any]]:
        return self.inner.cache_identity()

    def cache_prompt(self, request: Any) -> Optional[str]:
        return self.inner.cache_prompt(request)

    # --- answers -----------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], sink: Optional[StreamSink] = None) -> list[Completion]:
        looked_up = [self._known.pop(id(r))[1:] if self._known.get(id(r), (None,))[0] is r else self._find(r)
                     for r in requests]
        keys = [key for key, _ in looked_up]
        found = {i: answer for i, (_, answer) in enumerate(looked_up) if answer is not None}
        self._count(keys, found)
        missing = [i for i in range(len(requests)) if i not in found]
        if missing:
            rows_sink = sink if sink is None or len(missing) == len(requests) else RowSink(sink, missing)
            fresh = self._ready().generate([requests[i] for i in missing], rows_sink)
            found.update(zip(missing, fresh))
            self._store(keys, {i: c for i, c in zip(missing, fresh) if not (c.failed or c.unavailable)},
                        lambda c: {"completion": _plain(c)}, requests)
        if sink is not None:  # what was read is told as if it had just been generated
            for i in (i for i in range(len(requests)) if i not in missing):
                if getattr(sink, "streams_text", True):
                    sink.on_text(i, found[i].text)
                sink.on_complete(i, found[i].text)
        return [found[i] for i in range(len(requests))]

    def loglikelihoods(self, requests: Sequence[ChoicesRequest]) -> list[ChoicesResult]:
        keys = [self.choices_key(request) for request in requests]
        return self._cached_batch(keys, requests, lambda items: self._ready().loglikelihoods(items), _choices)

    def rolling_loglikelihoods(self, texts: Sequence[str]) -> list[RollingResult]:
        keys = [self.rolling_key(text) for text in texts]
        return self._cached_batch(keys, texts, lambda items: self._ready().rolling_loglikelihoods(items), _rolling)

    # --- keys --------------------------------------------------------------------------------------

    def request_key(self, request: Request) -> Optional[str]:
        """The cache key of a generation request; None when its answer is not to be cached."""
        identity = self.inner.cache_identity()
        sampled = request.temperature > 0
        if identity is None or _unread(request.messages) or (
                sampled and (request.seed is None or not self.capabilities.per_request_seed)):
            return None
        settings = {k: v for k, v in (self.inner.generation or {}).items() if k not in PER_REQUEST}
        fields_ = {f.name: getattr(request, f.name) for f in fields(request) if f.name not in ("key", "messages")}
        return _digest("generate", identity, {"request": fields_, "settings": settings,
                                               "messages": _messages(request.messages),
                                               "prompt": self.inner.cache_prompt(request)})

    def choices_key(self, request: ChoicesRequest) -> Optional[str]:
        identity = self.inner.cache_identity()
        if identity is None or _unread(request.messages):
            return None
        return _digest("choices", identity, {"messages": _messages(request.messages),
                                              "continuations": list(request.continuations),
                                              "prompt": self.inner.cache_prompt(request)})

    def rolling_key(self, text: str) -> Optional[str]:
        identity = self.inner.cache_identity()
        return None if identity is None else _digest("rolling", identity, {"text": text})

    # --- inside ------------------------------------------------------------------------------------

    def _ready(self) -> Backend:
        """The wrapped backend, loaded now if the run asked for it and this is its first need."""
        if self._load_asked and not self._loaded:
            started = time.perf_counter()
            self.inner.load()
            log.info("load: %.2f s (deferred to the first request the response cache did not have)",
                     time.perf_counter() - started)
            self._loaded = True
        return self.inner

    def _find(self, request: Request) -> tuple[Optional[str], Optional[Completion]]:
        key = self.request_key(request)
        return key, None if key is None else _read(self.store.get(key), _completion)

    def _count(self, keys: list[Optional[str]], found: dict[int, Any]) -> None:
        self.hits += len(found)
        self.uncacheable += keys.count(None)
        self.misses += len(keys) - len(found) - keys.count(None)

    def _store(self, keys: list[Optional[str]], answers: dict[int, Any], entry: Callable[[Any], dict[str, Any]],
               requests: Sequence[Any]) -> None:
        model = self.inner.identity().model if hasattr(self.inner, "identity") else self.name
        stored_at = round(time.time(), 3)
        self.store.put_many({keys[i]: {**entry(answer), "about": {
            "backend": self.name, "model": model, "request": getattr(requests[i], "key", ""), "stored_at": stored_at}}
            for i, answer in answers.items() if keys[i] is not None})

    def _cached_batch(self, keys: list[Optional[str]], items: Sequence[Any], compute: Callable[[list[Any]], list[R]],
                      read: Callable[[dict[str, Any]], R]) -> list[R]:
        found = {i: answer for i, key in enumerate(keys) if key is not None
                 and (answer := _read(self.store.get(key), read)) is not None}
        self._count(keys, found)
        missing = [i for i in range(len(items)) if i not in found]
        if missing:
            fresh = compute([items[i] for i in missing])
            found.update(zip(missing, fresh))
            self._store(keys, {i: r for i, r in zip(missing, fresh) if getattr(r, "error", None) is None},
                        lambda r: {"result": asdict(r)}, items)
        return [found[i] for i in range(len(items))]


def _digest(kind: str, identity: dict[str, Any], material: dict[str, Any]) -> str:
    canonical = json.dumps({"format": KEY_FORMAT, "kind": kind, "model": identity, **material}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as the key takes them: a media part by its content's digest, not where it was read from."""
    return [{"role": m.role, "content": m.content, "name": m.name,
             "tool_calls": [[c.name, c.arguments] for c in m.tool_calls],
             "media": [[part.kind, part.sha256] for part in m.media]} for m in messages]


def _unread(messages: Sequence[Message]) -> bool:
    """A media part the plan did not read (no digest): where it came from cannot stand for what it holds."""
    return any(part.sha256 is None for message in messages for part in message.media)


def _read(entry: Optional[dict[str, Any]], read: Callable[[dict[str, Any]], R]) -> Optional[R]:
    """The answer an entry holds; None for no entry, or one these records cannot be made from (another version's)."""
    try:
        return None if entry is None else read(entry)
    except (KeyError, TypeError, ValueError):
        return None


def _plain(completion: Completion) -> dict[str, Any]:
    data = asdict(completion)
    for name in ("cached", "unavailable"):
        data.pop(name)
    return data


def _completion(entry: dict[str, Any]) -> Completion:
    data = dict(entry["completion"])
    data["tool_calls"] = [ToolCall(**call) for call in data["tool_calls"]]
    return Completion(**data, cached=True)


def _choices(entry: dict[str, Any]) -> ChoicesResult:
    data = dict(entry["result"])
    data["continuations"] = [Continuation(**c) for c in data["continuations"]]
    return ChoicesResult(**{**data, "cached": True})


def _rolling(entry: dict[str, Any]) -> RollingResult:
    return RollingResult(**{**entry["result"], "cached": True})
