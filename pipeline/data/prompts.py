"""Turn a Sample and the session settings into the exact text the model is given, and count it.

Shared by plan (to count prompt tokens before loading weights) and execute (to generate), so
both see the same prompt: the chat template is rendered by pipeline.data.chat_template in both.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.data.chat_template import ChatTemplate, TokenCounter
from pipeline.core.config import SessionConfig
from pipeline.core.errors import UserError
from pipeline.core.records import MediaPart, Message, Sample, ToolCall
from pipeline.core.text_files import read_json
from pipeline.data.media import describe, from_description


def conversation(sample: Sample, session: SessionConfig) -> list[Message]:
    """The session's history file's messages, then the sample's, behind the session's system prompt
    unless they have their own."""
    messages = list(read_history(session.history)) + list(sample.messages) if session.history else list(sample.messages)
    if session.system_prompt is not None and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", session.system_prompt))
    return messages


def render(template: Optional[ChatTemplate], messages: list[Message], session: SessionConfig,
           tools: Optional[list[dict[str, Any]]] = None) -> str:
    """The prompt text: through the chat template (with the session's template arguments and the
    JSON schemas of the tools offered, if any), or the contents joined as plain text; then the
    session's prefill, which the model continues."""
    if session.chat_template:
        assert template is not None, "the plan refuses chat sessions on models without a chat template"
        text = template.render([template_dict(m) for m in messages], add_generation_prompt=True, tools=tools or None,
                               **session.template_args)
    else:
        text = "\n\n".join(m.content for m in messages)
    return text + session.prefill


def as_dict(message: Message) -> dict[str, Any]:
    """A message as chat templates and history files take it (tool calls in the OpenAI shape; media
    parts described by path and sha256, never their bytes)."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.media:
        data["media"] = [describe(part) for part in message.media]
    if message.tool_calls:
        data["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                              for c in message.tool_calls]
    if message.name is not None:
        data["name"] = message.name
    return data


def template_dict(message: Message) -> dict[str, Any]:
    """A message as a chat template takes it: a message with media has a list of parts, the media
    first ({"type": "image"} / {"type": "audio"}: the template writes the model's placeholder, the
    processor expands it), then the text."""
    data = as_dict(message)
    if message.media:
        del data["media"]
        data["content"] = [{"type": part.kind} for part in message.media] + \
            ([{"type": "text", "text": message.content}] if message.content else [])
    return data


def from_dict(data: dict[str, Any]) -> Message:
    """The inverse of as_dict, for messages already checked by read_history."""
    calls = tuple(ToolCall(c["function"]["name"], c["function"]["arguments"]) for c in data.get("tool_calls", ()))
    media = tuple(from_description(part) for part in data.get("media", ()) if isinstance(part, dict))
    return Message(data["role"], data["content"], media, tool_calls=calls, name=data.get("name"))


def adds_special_tokens(session: SessionConfig) -> bool:
    """Whether the tokenizer should add its own special tokens (BOS ...) when encoding the prompt.

    A chat template already writes them; plain text needs the tokenizer to."""
    return not session.chat_template


def count_prompt_tokens(samples: list[Sample], session: SessionConfig, template: Optional[ChatTemplate],
                        counter: TokenCounter, reply_tokens: int = 0,
                        tools: Optional[list[dict[str, Any]]] = None,
                        media_counter: Optional[Callable[[str, list[MediaPart]], int]] = None) -> dict[str, int]:
    """Sample id -> tokens of its rendered prompt (with the tools' schemas), as the model will see it.

    A scripted conversation counts its last turn's prompt, with `reply_tokens` (max_new_tokens) for
    each earlier answer of the model: an upper bound, since the answers are not known yet. Tool
    round trips are not counted: their results are not known either (execute checks each round).
    A prompt with images or audio is counted by `media_counter(text, parts)` (the model's processor,
    which expands each part's placeholder into its tokens)."""
    counts = {}
    for sample in samples:
        messages = conversation(sample, session)
        for index, turn in enumerate(sample.turns):
            messages.append(Message("user", turn.content))
            if index < len(sample.turns) - 1:
                messages.append(Message("assistant", ""))
        extra = reply_tokens * max(0, len(sample.turns) - 1)
        text = render(template, messages, session, tools)
        media = [part for message in messages for part in message.media]
        if media and media_counter is not None:
            counts[sample.id] = media_counter(text, media) + extra
        else:
            counts[sample.id] = counter.count(text, adds_special_tokens(session)) + extra
    return counts


def read_history(path: str) -> tuple[Message, ...]:
    """The messages of a history file: a JSON list of {role, content[, tool_calls | name]}, as
    session.autosave and ChatSession.save write them."""
    file = Path(path).expanduser()
    try:
        modified = file.stat().st_mtime_ns
    except OSError:
        modified = None
    return _read_history(path, modified)


@lru_cache(maxsize=8)
def _read_history(path: str, modified: Optional[int]) -> tuple[Message, ...]:
    """Read once per file version: the prompt of every sample needs it."""
    file = Path(path).expanduser()
    where = f"session.history={path!r}"
    # missing, a folder, not UTF-8, not JSON: one line naming the file (and the line)
    raw = read_json(file, where, "a JSON file: a list of {role, content} messages")
    if not isinstance(raw, list) or not all(is_message(m) for m in raw):
        raise UserError(f"{where}: expected a JSON list of {{\"role\": system|user|assistant|tool, "
                        "\"content\": a string}} (assistant messages may add tool_calls)")
    return tuple(from_dict(m) for m in raw)


def is_message(data: Any) -> bool:
    """Whether `data` is a message as as_dict writes it: {role, content (a string), tool_calls?, name?}."""
    if not isinstance(data, dict) or data.get("role") not in ("system", "user", "assistant", "tool") \
            or not isinstance(data.get("content"), str):
        return False
    calls = data.get("tool_calls", [])
    return isinstance(calls, list) and all(
        isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
        and isinstance(c["function"].get("arguments"), dict) for c in calls)
