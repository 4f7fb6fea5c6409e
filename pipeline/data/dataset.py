"""Read a dataset JSONL file into Samples, refusing bad lines with `file:line` and the reason.

The file may be gzip, bzip2 or xz-compressed (recognised by its first bytes, see pipeline.core.text_files).

Each line is a JSON object with an `id` (string or integer; the line number when absent),
either a `prompt` (a string, sent as one user message) or `messages` (a list of
`{"role", "content"}`, where content is a string or a list of parts: `{"type": "text", "text"}`,
`{"type": "image" | "audio", "path" | "url": ...}`, checked and decoded once by
pipeline.data.media: under the dataset's folder or dataset.media_dirs, within dataset.max_media_mb),
and an optional `reference` answer; or a scripted conversation: `turns` (user messages, each a string or `{content, reference}`), after an
optional `messages` history. Messages may carry tool steps as a saved conversation has them
(assistant `tool_calls`, `tool` results). Whether
the model can take image or audio parts is the plan's business; nothing here touches a model.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any, Optional

from pipeline.core.config import DatasetConfig
from pipeline.core.errors import UserError
from pipeline.core.records import MediaPart, Message, Sample, Turn
from pipeline.core.text_files import read_lines
from pipeline.data.media import MediaRules, check_part, dataset_rules
from pipeline.data.prompts import from_dict, is_message

ROLES = ("system", "user", "assistant", "tool")
MEDIA_KINDS = ("image", "audio")


def load_samples(config: DatasetConfig, allow_download: bool = False) -> list[Sample]:
    """The file's samples; `allow_download` (runtime.allow_download) lets media parts name http(s) URLs."""
    path = Path(config.path).expanduser()
    rules = dataset_rules(path, config.media_dirs, config.max_media_mb, allow_download)
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    # read_lines names the file and line of any byte that is not UTF-8, and reads gzip/bzip2/xz files
    with closing(read_lines(path, f"dataset.path={config.path!r}",
                            "a .jsonl file of {id, prompt | messages, reference}")) as lines:
        for line_number, line in lines:
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: not valid JSON: {error.msg} (column {error.colno})") from None
            sample = _to_sample(record, where, line_number, rules)
            if sample.id in seen:
                raise UserError(f"{where}: duplicate id {sample.id!r} (first on line {seen[sample.id]})")
            seen[sample.id] = line_number
            samples.append(sample)
            if config.limit is not None and len(samples) >= config.limit:
                break
    if not samples:
        raise UserError(f"dataset.path={config.path!r}: the file has no samples")
    return samples


def _to_sample(record: Any, where: str, line_number: int, rules: MediaRules) -> Sample:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    sample_id = record.get("id", line_number)
    if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool) or str(sample_id) == "":
        raise UserError(f"{where}: id must be a non-empty string or an integer, got {sample_id!r}")
    reference = _reference(record.get("reference"), where)
    if "prompt" in record and ("messages" in record or "turns" in record):
        raise UserError(f"{where}: give a prompt, or messages and/or turns, not both")
    if "turns" in record:
        history = (_messages(record["messages"], where, rules, may_end_with_assistant=True)
                   if "messages" in record else ())
        return Sample(id=str(sample_id), messages=history, turns=_turns(record["turns"], where))
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{where}: prompt must be a non-empty string")
        messages: tuple[Message, ...] = (Message("user", prompt),)
    elif "messages" in record:
        messages = _messages(record["messages"], where, rules)
    else:
        raise UserError(f"{where}: a record needs a prompt (string), messages (list of role/content) "
                        "or turns (list of user messages, each a string or {content, reference})")
    return Sample(id=str(sample_id), messages=messages, reference=reference)


def _turns(raw: Any, where: str) -> tuple[Turn, ...]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: turns must be a non-empty list of user messages")
    turns = []
    for index, item in enumerate(raw):
        if isinstance(item, str) and item.strip():
            turns.append(Turn(item))
        elif isinstance(item, dict) and isinstance(item.get("content"), str) and item["content"].strip():
            turns.append(Turn(item["content"], _reference(item.get("reference"), f"{where}: turns[{index}]")))
        else:
            raise UserError(f"{where}: turns[{index}] must be a non-empty string or {{\"content\": a string, "
                            "\"reference\": optional}")
    return tuple(turns)


def _messages(raw: Any, where: str, rules: MediaRules, may_end_with_assistant: bool = False) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
    messages = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("role") not in ROLES or not isinstance(item.get("content"), (str, list)):
            raise UserError(f"{where}: messages[{index}] must be {{\"role\": one of {', '.join(ROLES)}, "
                            "\"content\": a string or a list of parts}")
        if isinstance(item["content"], str):
            if not is_message(item):
                raise UserError(f"{where}: messages[{index}].tool_calls must be a list of {{\"type\": \"function\", "
                                "\"function\": {\"name\": a string, \"arguments\": an object}}")
            messages.append(from_dict(item))
        else:
            messages.append(_message_from_parts(item["role"], item["content"], f"{where}: messages[{index}]", rules))
    if messages[-1].role == "assistant" and not may_end_with_assistant:
        raise UserError(f"{where}: the last message must not be the assistant's: there is nothing to answer")
    return tuple(messages)


def _message_from_parts(role: str, parts: list, where: str, rules: MediaRules) -> Message:
    texts, media = [], []
    for number, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in MEDIA_KINDS and isinstance(part.get("path") or part.get("url") or part.get(kind), str):
            source = part.get("path") or part.get("url") or part.get(kind)
            media.append(check_part(MediaPart(kind, source), rules, f"{where}.content[{number}]"))
        else:
            raise UserError(f"{where}.content[{number}] must be {{\"type\": \"text\", \"text\": ...}} or "
                            f"{{\"type\": one of {', '.join(MEDIA_KINDS)}, \"path\" or \"url\": ...}}")
    return Message(role, "".join(texts), tuple(media))


def _reference(raw: Any, where: str) -> Optional[str]:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise UserError(f"{where}: reference must be a string or a number, got {type(raw).__name__}")
    return str(raw)
