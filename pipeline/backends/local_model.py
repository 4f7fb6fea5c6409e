"""The plan's checks of a local model folder that every kind rendering its chat template makes (transformers,
vLLM; a server's kind reads added tokens from backend.tokenizer): the template is there when the session needs
one, it shows the tools to the model, and which added tokens the tokenizer declares (where thinking tags are).

Not here: counting tokens (pipeline.backends.local_tokenizer) or anything a kind decides for itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pipeline.core.config import SessionConfig
from pipeline.core.errors import UserError
from pipeline.core.records import ResolvedModel
from pipeline.core.text_files import read_json
from pipeline.data.chat_template import ChatTemplate


def added_tokens(folder: Path) -> list[str]:
    """The tokenizer's added tokens as written in tokenizer.json (where thinking tags are declared)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return []
    try:
        data = read_json(path)
    except Exception:  # noqa: BLE001 - an unreadable tokenizer is reported where it is read for counting
        return []
    return [token.get("content", "") for token in data.get("added_tokens") or [] if isinstance(token, dict)]


def require_chat_template(model: ResolvedModel, session: SessionConfig) -> bool:
    """Whether the session renders through a chat template; a UserError when it needs one the model lacks."""
    if session.chat_template and not model.has_chat_template:
        raise UserError(f"session.chat_template=true but model {model.reference!r} has no chat template; "
                        "set session.chat_template=false to send plain text")
    return session.chat_template


def check_tools(model: ResolvedModel, schemas: list[dict[str, Any]], template: Optional[ChatTemplate]) -> list[dict]:
    """The tools' JSON schemas, once the model's chat template shows them (the model reads them in its prompt)."""
    if not schemas:
        return []
    if template is None:
        raise UserError("session.tools needs the model's chat template to show the tools; "
                        "set session.chat_template=true")
    probe = [{"role": "user", "content": "?"}]
    if template.render(probe, tools=schemas) == template.render(probe):
        raise UserError(f"session.tools: the chat template of {model.reference!r} ignores tools, so the model "
                        "would never see them; use a model whose template supports tool calling, or drop session.tools")
    return schemas
