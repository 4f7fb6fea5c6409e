"""Turn a Sample and the session settings into the exact text the model is given.

Shared by plan (to count prompt tokens before loading weights) and execute (to generate), so
both see the same prompt.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import SessionConfig
from pipeline.records import Message, Sample


def conversation(sample: Sample, session: SessionConfig) -> list[Message]:
    """The sample's messages, behind the session's system prompt unless the sample has its own."""
    messages = list(sample.messages)
    if session.system_prompt is not None and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", session.system_prompt))
    return messages


def render(tokenizer: Any, messages: list[Message], session: SessionConfig) -> str:
    """The prompt text: through the chat template, or the contents joined as plain text."""
    if session.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            tokenize=False,
        )
    return "\n\n".join(m.content for m in messages)


def adds_special_tokens(session: SessionConfig) -> bool:
    """Whether the tokenizer should add its own special tokens (BOS ...) when encoding the prompt.

    A chat template already writes them; plain text needs the tokenizer to."""
    return not session.chat_template
