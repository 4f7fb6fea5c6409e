"""Few-shot examples (dataset.fewshot): k worked examples put before each sample's prompt.

The examples come from another split of the same dataset (`fewshot.split`), another file
(`fewshot.path`, read with the same fields and templates), or else the dataset's own records (the
sample itself left out). Which k a sample gets depends only on the seed, the sample's id and the
pool, never on the batch, the order or dataset.limit: each sample draws from its own
random.Random seeded with (seed, id).

Styles: `inline` joins the examples (prompt, dataset.target_delimiter, answer) and the prompt with
fewshot.delimiter into one user message, as lm-eval does; `turns` makes each example an earlier
user turn and the assistant's answer, for chat models.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Sequence

from pipeline.core.config import DatasetConfig
from pipeline.core.errors import UserError
from pipeline.core.records import Message, Sample
from pipeline.data.mapping import Shot


def draw(seed: int, sample_id: str, pool: Sequence[Shot], k: int, same_source: bool) -> list[Shot]:
    """The k examples for one sample: its own seeded draw from the pool (without itself when the pool is its own)."""
    candidates = [shot for shot in pool if not (same_source and shot.id == sample_id)]
    if len(candidates) < k:
        raise UserError(f"dataset.fewshot.k={k}: the examples' source has only {len(candidates)} record(s) to draw "
                        f"from for sample {sample_id!r}; lower dataset.fewshot.k or give a larger fewshot.split/path")
    return random.Random(f"{seed}:{sample_id}").sample(candidates, k)


def with_examples(sample: Sample, shots: Sequence[Shot], config: DatasetConfig) -> Sample:
    """The sample with its examples before its last user message (inline) or as earlier turns."""
    if not shots:
        return sample
    fewshot = config.fewshot
    messages = list(sample.messages)
    last_user = max(i for i, m in enumerate(messages) if m.role == "user") if any(
        m.role == "user" for m in messages) else len(messages)
    if fewshot.style == "turns":
        earlier = [m for shot in shots for m in (Message("user", shot.prompt), Message("assistant", shot.answer))]
        messages[last_user:last_user] = earlier
    else:
        examples = fewshot.delimiter.join(shot.prompt + config.target_delimiter + shot.answer for shot in shots)
        if last_user < len(messages):
            question = messages[last_user]
            messages[last_user] = replace(question, content=examples + fewshot.delimiter + question.content)
        else:
            messages.append(Message("user", examples))
    return replace(sample, messages=tuple(messages))
