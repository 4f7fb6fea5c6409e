"""`ChatSession`: a conversation with a loaded model that remembers, retries and saves itself.

Each `send` adds the user's message and the model's answer to the history; `retry` replaces the
last answer (and its tool steps) with a new one (each prompt has its own sample id, so sampling
differs); `clear` forgets the turns;
`set_system` changes the system prompt. With an autosave path the conversation is written
(atomically) after every turn as a JSON list of {role, content} messages — the same format
`session.history` and `ChatSession.load` read. The terminal chat (pipeline.cli.chat) drives this class.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from pipeline.core.files import write_json
from pipeline.core.records import MediaPart, Message
from pipeline.core.streaming import StreamSink
from pipeline.data.prompts import as_dict, read_history

if TYPE_CHECKING:
    from pipeline.client import PromptResponse, RuntimeClient


class ChatSession:
    def __init__(self, client: "RuntimeClient", system_prompt: Optional[str] = None,
                 autosave_path: Optional[str | Path] = None, history: Sequence[Message] = ()) -> None:
        self.client = client
        self.system_prompt = system_prompt
        self.autosave_path = Path(autosave_path) if autosave_path else None
        self.messages: list[Message] = list(history)

    @classmethod
    def load(cls, client: "RuntimeClient", path: str | Path, autosave: bool = True) -> "ChatSession":
        """Continue a saved conversation (its system message, if any, becomes the system prompt)."""
        messages = list(read_history(str(path)))
        system = messages.pop(0).content if messages and messages[0].role == "system" else None
        return cls(client, system, path if autosave else None, messages)

    def send(self, text: str, sink: Optional[StreamSink] = None, media: Sequence[MediaPart] = ()) -> "PromptResponse":
        """`media`: checked image and audio parts (pipeline.data.media.user_parts) sent with the text."""
        user = Message("user", text, tuple(media))
        response = self.client.prompt_parts([user], history=self.context(), sink=sink)
        self.messages += [user, *response.messages]
        self._autosave()
        return response

    def retry(self, sink: Optional[StreamSink] = None) -> "PromptResponse":
        """A new answer to the last user message, replacing the old one."""
        last_user = max((i for i, m in enumerate(self.messages) if m.role == "user"), default=None)
        if last_user is None or self.messages[-1].role != "assistant":
            raise ValueError("nothing to retry yet")
        user = self.messages[last_user]
        self.messages = self.messages[:last_user]
        return self.send(user.content, sink, user.media)

    def clear(self) -> None:
        self.messages = []
        self._autosave()

    def set_system(self, text: Optional[str]) -> None:
        self.system_prompt = text or None
        self._autosave()

    def save(self, path: Optional[str | Path] = None) -> Path:
        target = Path(path) if path else self.autosave_path
        if target is None:
            raise ValueError("no path given and no autosave path set")
        write_json(target, [as_dict(m) for m in self.context()])
        return target

    def context(self) -> list[Message]:
        system = [Message("system", self.system_prompt)] if self.system_prompt else []
        return system + self.messages

    def _autosave(self) -> None:
        if self.autosave_path is not None:
            self.save(self.autosave_path)
