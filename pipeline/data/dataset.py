"""Read a dataset into Samples, refusing bad records with `file:line` (or the split and row) and the reason.

The records come from pipeline.data.sources (JSONL, JSON, CSV, Parquet, a Hub dataset in the local
cache), are mapped by pipeline.data.mapping (dataset.kind, fields, templates) and get their few-shot
examples from pipeline.data.fewshot. A file may be gzip, bzip2 or xz-compressed (pipeline.core.text_files).
A file is read to its end even under dataset.limit (the records past it are decoded, not mapped), so that
a file damaged anywhere (bad compressed data, a line that is not JSON, a broken Parquet page) is refused
while planning, not halfway through a run. A Hub dataset is read only as far as the limit.

Today's JSONL format, read when the mapping is left at its defaults: each line is a JSON object with an `id` (string or integer; the line number when absent),
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

from pathlib import Path
from typing import Any, Optional

from pipeline.core.config import DatasetConfig
from pipeline.core.errors import UserError
from pipeline.core.records import MediaPart, Message, Sample, Turn
from pipeline.data.fewshot import draw, with_examples
from pipeline.data.mapping import Mapper
from pipeline.data.media import Fetcher, MediaRules, check_part, dataset_rules
from pipeline.data.prompts import from_dict, is_message
from pipeline.data.sources import read_records, source_kind

ROLES = ("system", "user", "assistant", "tool")
MEDIA_KINDS = ("image", "audio")


def load_samples(config: DatasetConfig, allow_download: bool = False, fetch: Optional[Fetcher] = None) -> list[Sample]:
    """The dataset's samples (the first dataset.limit), mapped (pipeline.data.mapping) and with their
    few-shot examples (pipeline.data.fewshot); a UserError naming the record for any mistake.
    `allow_download` (runtime.allow_download): a Hub dataset missing from the cache may be fetched, and
    media parts may name http(s) URLs, which `fetch` (a backend's) turns into local files, if given."""
    rules = dataset_rules(Path(config.path), config.media_dirs, config.max_media_mb, allow_download, fetch)
    mapper = Mapper(config, lambda record, where, number: _to_sample(record, where, number, rules))
    samples = _mapped(config.path, config.split, config.subset, allow_download, mapper, config.limit, "dataset.path")
    if not samples:
        what = f"split {config.split!r} of " if config.split else ""
        raise UserError(f"dataset.path={config.path!r}: {what}the {'dataset' if config.split else 'file'} has no samples")
    if config.fewshot.k:
        samples = _with_fewshot(config, samples, mapper, allow_download)
    return samples


def _mapped(path: str, split: Optional[str], subset: Optional[str], allow_download: bool, mapper: Mapper,
            limit: Optional[int], key: str) -> list[Sample]:
    samples: list[Sample] = []
    seen: dict[str, str] = {}
    records = read_records(path, split, subset, allow_download, key)
    try:
        for raw in records:
            sample = mapper.sample(raw)
            if sample.id in seen:
                first = seen[sample.id]
                raise UserError(f"{raw.where}: duplicate id {sample.id!r} (first {'on line ' if first.isdigit() else 'at '}"
                                f"{first})")
            seen[sample.id] = str(raw.number) if ":" in raw.where else raw.where
            samples.append(sample)
            if limit is not None and len(samples) >= limit:
                break
        if source_kind(path) != "hub":  # a file is decoded to its end, so damage past dataset.limit is found now
            for _ in records:
                pass
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()
    return samples


def _with_fewshot(config: DatasetConfig, samples: list[Sample], mapper: Mapper, allow_download: bool) -> list[Sample]:
    fewshot = config.fewshot
    if fewshot.path is not None and fewshot.split is not None:
        raise UserError("dataset.fewshot: give fewshot.path (another file) or fewshot.split (another split), not both")
    if fewshot.path is not None:
        pool = _mapped(fewshot.path, None, None, allow_download, mapper, None, "dataset.fewshot.path")
    elif fewshot.split is not None:
        pool = _mapped(config.path, fewshot.split, config.subset, allow_download, mapper, None, "dataset.fewshot.split")
    else:  # the dataset's own records, all of them: a sample's examples must not depend on dataset.limit
        pool = samples if config.limit is None else _mapped(config.path, config.split, config.subset, allow_download,
                                                            mapper, None, "dataset.path")
    same_source = fewshot.path is None and (fewshot.split is None or fewshot.split == config.split)
    shots = [mapper.shot(sample) for sample in pool]
    for shot in shots:
        if not shot.answer.strip():
            raise UserError(f"dataset.fewshot: example {shot.id!r} has no reference to show as its answer; "
                            "map dataset.fields.reference or set dataset.template.reference")
    return [with_examples(s, draw(fewshot.seed, s.id, shots, fewshot.k, same_source), config) for s in samples]


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
        fields = ", ".join(map(str, record)) or "no fields"
        raise UserError(f"{where}: a record needs a prompt (string), messages (list of role/content) "
                        "or turns (list of user messages, each a string or {content, reference}); this one has "
                        f"{fields}: name the prompt's field with dataset.fields.prompt=NAME")
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
