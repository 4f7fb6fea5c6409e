"""Reading what an OpenAI-compatible server answers: every body the server backend receives is checked here.

A server may answer with something the API does not promise: a streamed chunk that is not JSON,
`"choices": []`, a `text/plain` page from a proxy, a missing field, a field of the wrong type. Each
reader below takes the decoded body (or the stream's lines), checks the shape it relies on, and
returns typed values; anything else raises `BadAnswer` saying what was wrong, in a few words, so
the caller can turn it into that request's error naming the server (`BadAnswer.at`). An `error`
object inside a 200 answer is the server's own refusal: `ServerError`, with its message.

Fields that servers commonly leave out and that nothing depends on (usage, finish_reason,
a delta's role) may be absent; a field that is present must have its type. Not here: HTTP status
codes, retries, connection errors (pipeline.backends.openai.backend and .client), and what the
values mean (splitting reasoning, cutting at stop strings, scoring).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

EXCERPT = 80  # characters of a bad body or chunk quoted in the error


class BadAnswer(Exception):
    """The server answered something the API does not promise; str(): what was wrong."""

    def at(self, server: str, route: str) -> str:
        """The error as a record says it: which server, which request, what was wrong."""
        return f"the server at {server} answered {route} with {self}"


class ServerError(Exception):
    """A 200 answer (or a streamed chunk) that is an `error` object: the server's own words."""

    def at(self, server: str) -> str:
        return f"the server at {server} reported an error: {self}"


# --- bodies -----------------------------------------------------------------------------------------


def json_body(text: str, content_type: Optional[str]) -> Any:
    """A whole body decoded as JSON; BadAnswer naming its content type and its start when it is not."""
    try:
        return json.loads(text)
    except ValueError:
        raise BadAnswer(f"{_kind(content_type)} that is not JSON: {_excerpt(text)}") from None


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadAnswer(f"{what} that is {_type(data)}, not a JSON object")
    error = data.get("error")
    if error is not None and "choices" not in data and "data" not in data:
        raise ServerError(_error_message(error))
    return data


def _choices(data: dict[str, Any], what: str, required: bool) -> list[dict[str, Any]]:
    choices = data.get("choices")
    if choices is None and not required:
        return []
    if not isinstance(choices, list):
        raise BadAnswer(f"{what} without a choices list" if choices is None
                        else f"{what} whose choices is {_type(choices)}, not a list")
    if required and not choices:
        raise BadAnswer(f'{what} with "choices": [] (no answer)')
    for choice in choices:
        if not isinstance(choice, dict):
            raise BadAnswer(f"{what} with a choice that is {_type(choice)}, not an object")
    return choices


# --- chat completions: the stream (and a whole answer from a server that ignores stream=true) ----------


@dataclass(frozen=True)
class Usage:
    """The server's token counts (0 where it gives none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Piece:
    """What one chunk's choice adds to the answer (or a whole message, when the server did not stream)."""

    content: str = ""
    reasoning: str = ""
    calls: tuple[tuple[int, str, str], ...] = ()  # (index, name piece, arguments piece): tool calls come in pieces
    finish: Optional[str] = None

    @property
    def says_something(self) -> bool:
        return bool(self.content or self.reasoning or self.calls)


@dataclass
class ChatAnswer:
    """A whole chat answer, its pieces joined."""

    text: str = ""
    reasoning: str = ""
    calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> {"name", "arguments"}
    finish: Optional[str] = None
    usage: Usage = field(default_factory=Usage)


class ChatStream:
    """A streamed chat completion read line by line: `feed` each line as it arrives (it returns the pieces
    it completed, for a sink to show at once), then `answer()` for the whole. A body that is JSON (a server
    that ignores stream=true) is read as one answer; a body of another type is read as an event stream up to
    its first line that is not one (a proxy's text/plain or HTML page), where it is refused."""

    def __init__(self, content_type: Optional[str]) -> None:
        self.content_type = content_type
        mime = (content_type or "").split(";")[0].strip().lower()
        self._whole = mime.endswith("json")
        self._stream = not self._whole and mime in ("", "text/event-stream")
        self._lines: list[str] = []  # the JSON body, or the data lines of the event under way
        self._done = False
        self._events = 0  # data events read
        self._stray = ""  # the first line that is no SSE field (shown when nothing else came)
        self._chose = False  # some chunk had a choice
        self._answer = ChatAnswer()

    def feed(self, line: str) -> list[Piece]:
        if self._whole:
            self._lines.append(line)
            return []
        if line.startswith("data:"):
            self._lines.append(line[5:].removeprefix(" "))
            return []
        if not line.strip():
            return self._event()
        if line.startswith((":", "event:", "id:", "retry:")):
            return []  # comments and the fields besides data carry nothing an answer needs
        if not self._stream:  # an event stream under another content type is read; anything else is refused
            raise BadAnswer(f"{_kind(self.content_type)}, not an event stream: {_excerpt(line)}")
        self._stray = self._stray or line
        return []

    def answer(self) -> ChatAnswer:
        """The whole answer, once the body has ended; BadAnswer when no chunk had a choice."""
        if self._whole:
            data = _object(json_body("\n".join(self._lines), self.content_type), "a chat completion")
            choices = _choices(data, "a chat completion", required=True)
            self._add([_piece(choices[0].get("message"), choices[0], "message")], data)
            return self._answer
        self._event()  # a last event without the blank line after it
        if not self._chose:
            raise BadAnswer('a stream without any choice (each chunk had "choices": [] or none)' if self._events
                            else f"an event stream without data: {_excerpt(self._stray)}" if self._stream
                            else f"{_kind(self.content_type)}, not an event stream: an empty body")
        return self._answer

    def _event(self) -> list[Piece]:
        if not self._lines:
            return []
        data, self._lines = "\n".join(self._lines), []
        self._events += 1
        if self._done or data.strip() == "[DONE]":
            self._done = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BadAnswer(f"a streamed chunk that is not JSON: {_excerpt(data)}") from None
        chunk = _object(chunk, "a streamed chunk")
        choices = _choices(chunk, "a streamed chunk", required=False)
        pieces = [_piece(choice.get("delta"), choice, "delta") for choice in choices[:1]]  # n=1: the first choice
        self._add(pieces, chunk)
        return pieces

    def _add(self, pieces: list[Piece], data: dict[str, Any]) -> None:
        answer = self._answer
        if data.get("usage") is not None:
            answer.usage = usage(data["usage"])
        for piece in pieces:
            self._chose = True
            answer.text += piece.content
            answer.reasoning += piece.reasoning
            for index, name, arguments in piece.calls:
                call = answer.calls.setdefault(index, {"name": "", "arguments": ""})
                call["name"] += name
                call["arguments"] += arguments
            answer.finish = piece.finish or answer.finish


def _piece(delta: Any, choice: dict[str, Any], name: str) -> Piece:
    if delta is None:
        if name == "message":
            raise BadAnswer("a chat completion whose choice has no message")
        delta = {}
    if not isinstance(delta, dict):
        raise BadAnswer(f"a {name} that is {_type(delta)}, not an object")
    content = _text(delta, "content", name)
    reasoning = _text(delta, "reasoning_content", name) or _text(delta, "reasoning", name)
    calls = delta.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise BadAnswer(f"a {name} whose tool_calls is {_type(calls)}, not a list")
    pieces = []
    for position, call in enumerate(calls or ()):
        if not isinstance(call, dict):
            raise BadAnswer(f"a {name} with a tool call that is {_type(call)}, not an object")
        index = call.get("index")
        if index is None:
            index = position if name == "message" else 0
        elif not _is_int(index):
            raise BadAnswer(f"a tool call whose index is {_type(index)}, not a whole number")
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise BadAnswer(f"a tool call whose function is {_type(function)}, not an object")
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some servers send the arguments decoded
            arguments = json.dumps(arguments)
        elif arguments is not None and not isinstance(arguments, str):
            raise BadAnswer(f"a tool call whose arguments is {_type(arguments)}, not text")
        pieces.append((index, _text(function, "name", "tool call"), arguments or ""))
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise BadAnswer(f"a choice whose finish_reason is {_type(finish)}, not text")
    return Piece(content, reasoning, tuple(pieces), finish)


def usage(data: Any) -> Usage:
    """A `usage` object: whole numbers where present."""
    if not isinstance(data, dict):
        raise BadAnswer(f"a usage that is {_type(data)}, not an object")
    details = data.get("completion_tokens_details")
    if details is not None and not isinstance(details, dict):
        raise BadAnswer(f"a usage whose completion_tokens_details is {_type(details)}, not an object")
    return Usage(_count(data, "prompt_tokens"), _count(data, "completion_tokens"),
                 _count(details or {}, "reasoning_tokens"))


# --- text completions (/completions): the parts of a thinking budget, and echoed log-probabilities ---


@dataclass(frozen=True)
class TextAnswer:
    """The first choice of a (non-streamed) text completion."""

    text: str
    finish: Optional[str]
    stop_reason: Any  # vLLM: the stop string matched (or a token id); None: the end of turn or no such field
    usage: Usage
    logprobs: Any  # the choice's logprobs as sent (None when absent): read with `echoed_logprobs`


def text_completion(data: Any) -> TextAnswer:
    data = _object(data, "a completion")
    choice = _choices(data, "a completion", required=True)[0]
    text = choice.get("text")
    if not isinstance(text, str):
        raise BadAnswer("a completion whose choice has no text" if text is None
                        else f"a completion whose text is {_type(text)}, not text")
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise BadAnswer(f"a completion whose finish_reason is {_type(finish)}, not text")
    found = data.get("usage")
    return TextAnswer(text, finish, choice.get("stop_reason"), usage(found) if found is not None else Usage(),
                      choice.get("logprobs"))


@dataclass(frozen=True)
class Logprobs:
    """An echoed prompt's log-probabilities, one entry a token, checked to line up."""

    tokens: list[str]
    token_logprobs: list[Optional[float]]
    text_offset: list[int]
    top_logprobs: list[Optional[dict[str, float]]]


def echoed_logprobs(data: Any) -> Logprobs:
    """The `logprobs` of a completion asked with echo and logprobs (the legacy format: tokens, token_logprobs,
    text_offset, top_logprobs); BadAnswer when it is missing or does not line up."""
    logprobs = text_completion(data).logprobs
    if logprobs is None:
        raise BadAnswer("a completion without logprobs")
    if not isinstance(logprobs, dict):
        raise BadAnswer(f"logprobs that is {_type(logprobs)}, not an object")
    lists = {}
    for name in ("tokens", "token_logprobs", "text_offset"):
        value = logprobs.get(name)
        if not isinstance(value, list):
            raise BadAnswer(f"logprobs without a {name} list" if value is None
                            else f"logprobs whose {name} is {_type(value)}, not a list")
        lists[name] = value
    tops = logprobs.get("top_logprobs")
    tops = [None] * len(lists["tokens"]) if tops is None else tops
    if not isinstance(tops, list):
        raise BadAnswer(f"logprobs whose top_logprobs is {_type(tops)}, not a list")
    sizes = {len(value) for value in (*lists.values(), tops)}
    if len(sizes) != 1:
        raise BadAnswer("logprobs whose tokens, token_logprobs, text_offset and top_logprobs differ in length")
    if not all(isinstance(token, str) for token in lists["tokens"]):
        raise BadAnswer("logprobs with a token that is not text")
    if not all(value is None or _is_number(value) for value in lists["token_logprobs"]):
        raise BadAnswer("logprobs with a token_logprobs entry that is not a number")
    if not all(_is_int(offset) and offset >= 0 for offset in lists["text_offset"]):
        raise BadAnswer("logprobs with a text_offset entry that is not a whole number >= 0")
    for top in tops:
        if top is not None and not (isinstance(top, dict) and all(_is_number(v) for v in top.values())):
            raise BadAnswer("logprobs with a top_logprobs entry that is not an object of numbers")
    return Logprobs(lists["tokens"], [None if v is None else float(v) for v in lists["token_logprobs"]],
                    lists["text_offset"], tops)


# --- planning: the model list and /tokenize ------------------------------------------------------------


def model_list(data: Any) -> list[dict[str, Any]]:
    """GET /models: the entries of `data`, each an object with an `id` that is text."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in entries):
        raise BadAnswer("not a model list")
    return entries


def token_count(data: Any) -> int:
    """vLLM's and SGLang's /tokenize: `count`, or the length of `tokens`."""
    if isinstance(data, dict):
        if _is_int(data.get("count")) and data["count"] >= 0:
            return data["count"]
        if isinstance(data.get("tokens"), list):
            return len(data["tokens"])
    raise BadAnswer("no count and no tokens list")


# --- small checks and words --------------------------------------------------------------------------------


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadAnswer(f"a {where} whose {key} is {_type(value)}, not text")
    return value


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if value is None:
        return 0
    if not _is_int(value) or value < 0:
        raise BadAnswer(f"a usage whose {key} is {_type(value)}, not a whole number >= 0")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _type(value: Any) -> str:
    """A value as an error names it: its JSON type and, if short, the value."""
    kinds = {dict: "an object", list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number"}
    kind = "null" if value is None else kinds.get(type(value), type(value).__name__)
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool)) and len(json.dumps(value)) <= 20 else ""
    return f"{shown} ({kind})" if shown else kind


def _kind(content_type: Optional[str]) -> str:
    mime = (content_type or "").split(";")[0].strip()
    return f"{'an' if mime[:1].lower() in 'aeiou' else 'a'} {mime} body" if mime else "a body without a content type"


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat[:EXCERPT] + "...") if len(flat) > EXCERPT else repr(flat) if flat else "an empty body"


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or json.dumps(error)
    return " ".join(str(error).split())[:200]
