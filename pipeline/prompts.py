"""Turn a Sample and the session settings into the exact text the model is given, and count it.

Shared by plan (to count prompt tokens before loading weights) and execute (to generate), so
both see the same prompt: the chat template is rendered by pipeline.chat_template in both.
"""

from __future__ import annotations

from typing import Any, Optional

from pipeline.chat_template import ChatTemplate, TokenCounter
from pipeline.config import SessionConfig
from pipeline.records import Message, Sample


def conversation(sample: Sample, session: SessionConfig) -> list[Message]:
    """The sample's messages, behind the session's system prompt unless the sample has its own."""
    messages = list(sample.messages)
    if session.system_prompt is not None and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", session.system_prompt))
    return messages


def render(template: Optional[ChatTemplate], messages: list[Message], session: SessionConfig) -> str:
    """The prompt text: through the chat template, or the contents joined as plain text."""
    if session.chat_template:
        assert template is not None, "the plan refuses chat sessions on models without a chat template"
        return template.render([as_dict(m) for m in messages], add_generation_prompt=True)
    return "\n\n".join(m.content for m in messages)


def as_dict(message: Message) -> dict[str, Any]:
    return {"role": message.role, "content": message.content}


def adds_special_tokens(session: SessionConfig) -> bool:
    """Whether the tokenizer should add its own special tokens (BOS ...) when encoding the prompt.

    A chat template already writes them; plain text needs the tokenizer to."""
    return not session.chat_template


def count_prompt_tokens(samples: list[Sample], session: SessionConfig, template: Optional[ChatTemplate],
                        counter: TokenCounter) -> dict[str, int]:
    """Sample id -> tokens of its rendered prompt, as the model will see it."""
    return {s.id: counter.count(render(template, conversation(s, session), session), adds_special_tokens(session))
            for s in samples}
