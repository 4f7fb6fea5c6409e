"""What a judge is shown for one answer: `scoring.judge.prompt` (Jinja) rendered over the answer's record.

The template sees:
- question: the last user message the model answered (its text);
- answer: the model's response (reasoning excluded); extracted: what dataset.scorer.extract took from it;
- reference: the sample's reference ("" when it has none); reasoning: the model's thinking ("" when none);
- rubric: scoring.judge.rubric ("" when unset);
- sample: the answer's whole transcript record (sample_id, messages, reference, response, ...).
Rendered in Jinja's sandbox with strict undefined names (pipeline.data.templates), so a template
naming something else is a mistake, found when the run is planned. `prompt_digest` names the
template and rubric a run judged with (a changed template is another judge).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from pipeline.core.config import JudgeConfig
from pipeline.core.records import Message, Sample
from pipeline.data.templates import compile_template, render_template

KEY = "scoring.judge.prompt"


def judge_messages(config: JudgeConfig, record: dict[str, Any]) -> list[Message]:
    """The messages a judge is sent for one answer record: its system prompt, then the rendered prompt."""
    text = render_template(_compiled(config.prompt), variables(config, record), KEY, f"answer {record.get('sample_id')!r}")
    system = [Message("system", config.system_prompt)] if config.system_prompt else []
    return system + [Message("user", text)]


@functools.lru_cache(maxsize=8)
def _compiled(source: str) -> Any:
    return compile_template(source, KEY)


def variables(config: JudgeConfig, record: dict[str, Any]) -> dict[str, Any]:
    users = [m.get("content") for m in record.get("messages") or [] if m.get("role") == "user"]
    return {"question": _text(users[-1]) if users else "", "answer": record.get("response") or "",
            "extracted": record.get("extracted") or "", "reference": record.get("reference") or "",
            "reasoning": record.get("reasoning") or "", "rubric": config.rubric or "", "sample": record}


def sample_record(sample: Sample, answer: str) -> dict[str, Any]:
    """A stand-in answer record for a sample not answered yet (the plan renders the judge's prompts
    before there are answers: `answer` stands for the longest one the model may write)."""
    messages = [{"role": m.role, "content": m.content} for m in sample.messages]
    return {"sample_id": sample.id, "messages": messages, "reference": sample.reference, "response": answer,
            "extracted": answer, "reasoning": "", "sample_index": 0}


def prompt_digest(config: JudgeConfig) -> str:
    """sha256 of what the judge is told besides the answer: system prompt, template, rubric (16 hex digits)."""
    text = "\x1f".join((config.system_prompt or "", config.prompt, config.rubric or ""))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _text(content: Any) -> str:
    """A message's text: its content, or the text parts of a list of parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")
