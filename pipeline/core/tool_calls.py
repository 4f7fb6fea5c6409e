"""Find the tool calls in what a model generated.

Two conventions cover the open chat models that call tools:
- `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, any number, around or after
  some text (Hermes, Qwen 2.5/3, SmolLM3, and the project's tool demo model);
- the whole answer one JSON object (or a list of them) with "name" and "arguments" or
  "parameters" (Llama 3.1-3.3).
Arguments may also be a JSON string holding the object (the OpenAI wire format).

A block that cannot be read (bad JSON, no name, no closing tag because max_new_tokens cut it) is
returned as a problem, so the loop can tell the model instead of silently treating it as an answer.
An answer with neither convention has no calls: it is the model's answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.records import ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.S)


@dataclass
class ParsedAnswer:
    text: str  # what the model said outside any tool call
    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # calls that could not be read, in words

    @property
    def wants_tools(self) -> bool:
        return bool(self.calls or self.problems)


def parse_tool_calls(generated: str) -> ParsedAnswer:
    if OPEN in generated:
        return _parse_blocks(generated)
    stripped = generated.strip()
    if stripped.startswith(("{", "[")):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return ParsedAnswer(generated)
        objects = value if isinstance(value, list) else [value]
        if objects and all(isinstance(o, dict) and "name" in o and ("arguments" in o or "parameters" in o)
                           for o in objects):
            parsed = ParsedAnswer("")
            for body in objects:
                _add_call(parsed, body, json.dumps(body))
            return parsed
    return ParsedAnswer(generated)


def _parse_blocks(generated: str) -> ParsedAnswer:
    parsed = ParsedAnswer(_BLOCK.sub("", generated))
    for body in _BLOCK.findall(generated):
        try:
            value = json.loads(body)
        except json.JSONDecodeError as error:
            parsed.problems.append(f"the tool call {_short(body)} is not valid JSON ({error.msg} at column "
                                   f"{error.colno}); write {OPEN}{{\"name\": ..., \"arguments\": {{...}}}}{CLOSE}")
            continue
        _add_call(parsed, value, body)
    tail = parsed.text
    if OPEN in tail:  # an opened block never closed
        parsed.text = tail[:tail.index(OPEN)]
        parsed.problems.append(f"the tool call {_short(tail[tail.index(OPEN):])} has no {CLOSE} "
                               "(cut short by max_new_tokens?)")
    parsed.text = parsed.text.strip()
    return parsed


def _add_call(parsed: ParsedAnswer, value: Any, body: str) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        parsed.problems.append(f"the tool call {_short(body)} has no \"name\"")
        return
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        parsed.problems.append(f"the tool call {_short(body)} has arguments that are not a JSON object")
        return
    parsed.calls.append(ToolCall(value["name"], arguments))


def _short(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")
