"""Turn a raw dataset record into a Sample, as dataset.kind, dataset.fields and dataset.template say.

- generate: a prompt (the mapped field, or dataset.template.prompt rendered over the record) and an
  optional reference (likewise). With every field at its default and no template, a record is
  read exactly as the JSONL format always was (prompt | messages | turns; pipeline.data.dataset).
- multiple_choice: a context (the prompt, as above), `choices` (a list of strings, or an object
  {text: [...], label: [...]} as ARC has it) and `answer` (the right choice's index, its label,
  A/B/C... by position, or its text). The Sample's reference is the right choice's text.
- perplexity: a document (the prompt, as above); no reference.

Every mistake is one UserError naming the record (`file:line`, or the split and row) and the
setting: a field the record lacks, a template that renders to nothing, an answer that names no choice.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pipeline.core.config import DatasetConfig, FieldsConfig
from pipeline.core.errors import UserError
from pipeline.core.records import Message, Sample
from pipeline.data.sources import RawRecord
from pipeline.data.templates import compile_template, render_template

MISSING = object()


@dataclass(frozen=True)
class Shot:
    """What a few-shot example contributes: its prompt and its answer, as text."""

    id: str
    prompt: str
    answer: str


class Mapper:
    """Records -> Samples for one dataset configuration (templates compiled once)."""

    def __init__(self, config: DatasetConfig, legacy: Callable[[Any, str, int], Sample]) -> None:
        self.config = config
        self.fields = config.fields
        self.prompt_template = compile_template(config.template.prompt, "dataset.template.prompt")
        self.reference_template = compile_template(config.template.reference, "dataset.template.reference")
        self.legacy = legacy  # today's JSONL reader for one record (messages, turns, media)
        self.plain = (config.kind == "generate" and self.prompt_template is None and self.reference_template is None
                      and config.fields == FieldsConfig())

    def sample(self, raw: RawRecord) -> Sample:
        if self.plain:
            return self.legacy(raw.data, raw.where, raw.number)
        record = raw.data
        if not isinstance(record, dict):
            raise UserError(f"{raw.where}: expected a record of named fields, got {type(record).__name__}")
        sample_id = self._id(raw)
        where = f"{raw.where} (id {sample_id!r})"
        prompt = self._prompt(record, where)
        if self.config.kind == "multiple_choice":
            choices, answer = self._choices(record, where)
            return Sample(id=sample_id, messages=(Message("user", prompt),), reference=choices[answer],
                          choices=choices, answer=answer)
        if self.config.kind == "perplexity":
            return Sample(id=sample_id, messages=(Message("user", prompt),))
        return Sample(id=sample_id, messages=(Message("user", prompt),), reference=self._reference(record, where))

    def shot(self, sample: Sample) -> Shot:
        """A sample as a worked example: its prompt and the answer to show after it."""
        answer = sample.reference if sample.reference is not None else ""
        return Shot(sample.id, sample.messages[-1].content if sample.messages else "", answer)

    # --- inside ------------------------------------------------------------------------------------

    def _id(self, raw: RawRecord) -> str:
        value = field_value(raw.data, self.fields.id)
        if value is MISSING or value is None:
            if self.fields.id != "id":
                raise UserError(f"{raw.where}: no field {self.fields.id!r} (dataset.fields.id); the record has "
                                f"{_names(raw.data)}")
            return str(raw.number)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
            raise UserError(f"{raw.where}: id must be a non-empty string or an integer, got {value!r}")
        return str(value)

    def _prompt(self, record: dict[str, Any], where: str) -> str:
        if self.prompt_template is not None:
            text = render_template(self.prompt_template, record, "dataset.template.prompt", where)
            if not text.strip():
                raise UserError(f"{where}: dataset.template.prompt renders to nothing")
            return text
        value = self._required(record, self.fields.prompt, "prompt", where)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: field {self.fields.prompt!r} (dataset.fields.prompt) must be a non-empty "
                            f"string, got {_short(value)}")
        return value

    def _reference(self, record: dict[str, Any], where: str) -> Optional[str]:
        if self.reference_template is not None:
            text = render_template(self.reference_template, record, "dataset.template.reference", where)
            if not text.strip():
                raise UserError(f"{where}: dataset.template.reference renders to nothing")
            return text
        value = field_value(record, self.fields.reference)
        if value is MISSING or value is None:
            if self.fields.reference != "reference":  # asked for by name: its absence is a mistake
                raise UserError(f"{where}: no field {self.fields.reference!r} (dataset.fields.reference); the record "
                                f"has {_names(record)}")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise UserError(f"{where}: field {self.fields.reference!r} (dataset.fields.reference) must be a string or "
                            f"a number, got {_short(value)}")
        return str(value)

    def _choices(self, record: dict[str, Any], where: str) -> tuple[tuple[str, ...], int]:
        raw = self._required(record, self.fields.choices, "choices", where)
        labels: list[str] = []
        if isinstance(raw, dict) and "text" in raw:
            labels = [str(label) for label in raw.get("label") or []]
            raw = raw["text"]
        if hasattr(raw, "tolist"):  # a numpy array, from Parquet through pandas
            raw = raw.tolist()
        if not isinstance(raw, (list, tuple)) or len(raw) < 2 or not all(isinstance(c, str) and c for c in raw):
            raise UserError(f"{where}: field {self.fields.choices!r} (dataset.fields.choices) must be a list of at "
                            f"least two non-empty strings, got {_short(raw)}")
        choices = tuple(raw)
        answer = self._required(record, self.fields.answer, "answer", where)
        index = answer_index(answer, choices, labels)
        if index is None:
            shown = f"labels {', '.join(labels)}" if labels else f"0-{len(choices) - 1} or A-{string.ascii_uppercase[len(choices) - 1]}"
            raise UserError(f"{where}: field {self.fields.answer!r} (dataset.fields.answer) = {answer!r} names none of "
                            f"the {len(choices)} choices ({shown}, or a choice's text)")
        return choices, index

    def _required(self, record: dict[str, Any], name: str, role: str, where: str) -> Any:
        value = field_value(record, name)
        if value is MISSING or value is None:
            raise UserError(f"{where}: no field {name!r} (dataset.fields.{role}); the record has {_names(record)}")
        return value


def field_value(record: Any, path: str) -> Any:
    """record["a"]["b"] for "a.b" (a list index by number: "choices.0"); MISSING where there is none."""
    value = record
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def answer_index(answer: Any, choices: tuple[str, ...], labels: list[str]) -> Optional[int]:
    """The index the answer names: an index, a label (the record's own, or A, B, ... by position), or a choice's text."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer if 0 <= answer < len(choices) else None
    if not isinstance(answer, str):
        return None
    text = answer.strip()
    if text in labels:
        return labels.index(text)
    if text.isdigit() and int(text) < len(choices):
        return int(text)
    if len(text) == 1 and text.upper() in string.ascii_uppercase[:len(choices)]:
        return string.ascii_uppercase.index(text.upper())
    return choices.index(answer) if answer in choices else None


def _names(record: Any) -> str:
    return ", ".join(map(str, record)) if isinstance(record, dict) and record else "no fields"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
