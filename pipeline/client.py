"""The Python API: `RuntimeClient` and `ChatSession`, the same resolve -> plan -> load -> generate path as the CLI.

    from pipeline.client import RuntimeClient
    client = RuntimeClient.from_overrides(["runtime.model=demo"])
    print(client.prompt("What is 12+30?").text)           # loads once, then reuses the model
    chat = client.session(system_prompt="Be brief.", autosave_path="chat.json")
    print(chat.send("What is 25+25?").text)

Settings come from the project's Hydra configs with the overrides a command line would take, so a
library call and `python -m pipeline` with the same overrides make the same plan, for either backend:
the model in this process (`backend=transformers`, loaded once and reused by every prompt and
session until the client is closed or dropped) or a served one (`backend=openai`: the server is
checked when planning and when loading, and each prompt is a streamed request to it). The client
works on its own copy of the config it is given. Prompts are checked against the model's context
when they are sent (the plan cannot know them in advance): a conversation that no longer fits is a
UserError that says so.

A `ChatSession` is a conversation over a client that remembers, retries and saves itself; the
terminal chat (pipeline.cli.chat) drives it. This module does not write run folders (the terminal
chat does) and does not generate by itself (pipeline.answering.loop and the backend do).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.answering.loop import Answering, Job, answer, tools_by_name
from pipeline.answering.tools import Tool, load_tools
from pipeline.backends.base import Backend
from pipeline.backends import registry
from pipeline.core.config import CONF_DIR, Config, register, to_config
from pipeline.core.errors import UserError
from pipeline.core.files import write_json
from pipeline.core.records import (
    LoadedRuntime,
    MediaPart,
    Message,
    ResolvedModel,
    RuntimePlan,
    Sample,
    TranscriptRecord,
)
from pipeline.core.streaming import StreamSink
from pipeline.data.media import user_parts
from pipeline.data.prompts import as_dict, conversation, read_history
from pipeline.stages.plan import check_modalities, plan
from pipeline.stages.resolve import resolve

_PROBE = Sample(id="probe", messages=(Message("user", ""),))  # what a client plans for: one prompt, not known yet


@dataclass
class PromptResponse:
    """What one prompt produced."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop, length, or tool (a tool's result is the answer: session.skip_summarization)
    ttft_s: float
    latency_s: float
    messages: list[Message] = field(default_factory=list)  # what followed the prompt: tool steps, then the answer
    records: list[TranscriptRecord] = field(default_factory=list)  # every step as a transcript record


class RuntimeClient:
    """resolve, plan, describe_plan, load, prompt, prompt_parts, session and close over one config."""

    def __init__(self, config: Config, overrides: Sequence[str] = ()) -> None:
        self.config = copy.deepcopy(config)  # the plan sets its batch size to 1: the caller's config stays as given
        self.overrides = tuple(overrides)  # for the plan's record of where each generation setting came from
        self._resolved: Optional[ResolvedModel] = None
        self._plan: Optional[RuntimePlan] = None
        self._backend: Optional[Backend] = None  # made by plan(), loaded (or connected) by load()
        self._runtime: Optional[LoadedRuntime] = None  # the in-process model, once loaded
        self._loaded = False
        self._tools: Optional[dict[str, Tool]] = None
        self._calls = 0  # each prompt gets its own sample id, so sampled prompts differ

    @classmethod
    def from_overrides(cls, overrides: Sequence[str] = ()) -> "RuntimeClient":
        """A client for the project's configs with command-line style overrides applied."""
        from hydra import compose, initialize_config_dir

        register()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return cls(to_config(compose(config_name="config", overrides=list(overrides))), overrides)

    def resolve(self) -> ResolvedModel:
        if self._resolved is None:
            self._resolved = resolve(self.config.runtime, self.config.backend)
        return self._resolved

    def plan(self) -> RuntimePlan:
        """The plan for prompts of this session, one at a time (batch size 1); a served model's server is asked."""
        if self._plan is None:
            model = self.resolve()
            self.config.runtime.batch_size = 1
            self.config.runtime.reuse = False  # close() lets the model go, rather than keeping it for a next job
            # the plan stage's own path, for one prompt not known yet; load() returns the model (no deferred load)
            self._plan, _, self._backend = plan(self.config, model, None, self.overrides, samples=[_PROBE],
                                                defer_load=False)
        return self._plan

    def describe_plan(self) -> dict[str, Any]:
        return self.plan().to_dict()

    def load(self) -> Optional[LoadedRuntime]:
        """Load the model in this process (returned, and reused by every later prompt), or, for a served
        model, check the server still serves it (None: nothing is loaded here)."""
        self.plan()
        assert self._backend is not None
        if not self._loaded:
            self._backend.load()
            self._runtime = getattr(self._backend, "runtime", None)
            self._loaded = True
        return self._runtime

    def close(self) -> None:
        """Let go of the model or the server connection; the next prompt loads (or connects) again."""
        if self._backend is not None:
            self._backend.close()
        self._backend, self._plan, self._runtime, self._loaded = None, None, None, False

    def __enter__(self) -> "RuntimeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prompt(self, text: str, *, images: Sequence[str] = (), audio: Sequence[str] = (),
               system_prompt: Optional[str] = None, sink: Optional[StreamSink] = None) -> PromptResponse:
        """One user message (after the session's system prompt, or `system_prompt`) -> the model's answer.

        `images` and `audio` are paths (any you name, within dataset.max_media_mb) or data: URLs,
        checked and decoded once here; a multimodal model takes them through its processor."""
        media = self.media_parts(images, audio)
        messages = [Message("system", system_prompt)] if system_prompt is not None else []
        return self.prompt_parts([Message("user", text, media)], history=messages, sink=sink)

    def media_parts(self, images: Sequence[str] = (), audio: Sequence[str] = ()) -> tuple[MediaPart, ...]:
        """Paths, data: URLs or (runtime.allow_download=true) http(s) URLs, checked; a model in this process
        has a URL fetched now (once, into the media cache), a served one gets it passed on."""
        return user_parts(images, audio, self.config.dataset.max_media_mb, self.config.runtime.allow_download,
                          registry.media_fetcher(self.config))

    def prompt_parts(self, parts: Sequence[Message], history: Sequence[Message] = (),
                     sink: Optional[StreamSink] = None) -> PromptResponse:
        """Continue `history` + `parts` (messages, possibly with media) with one answer.

        A request the backend could not answer is a UserError with its reason; a server that stopped
        answering altogether is pipeline.core.errors.BackendUnavailable."""
        self.load()
        backend = self._backend
        assert backend is not None
        messages = list(history) + list(parts)
        kind = registry.kind(self.config.backend.name)
        check_modalities(self.resolve(), [Sample(id=f"prompt-{self._calls + 1}", messages=tuple(messages))],
                         kind.modalities_from)
        for message in messages:
            for part in message.media:
                remote = part.path is None and not part.source.startswith("data:") and "://" in part.source
                if remote and not kind.passes_urls:
                    raise UserError(f"{part.kind} {part.source!r} is a URL not fetched: pass it to prompt(images=..., "
                                    "audio=...) with runtime.allow_download=true, or download it and name the file")
                if part.sha256 is None and not remote:  # built by the caller, not by prompt(): not checked
                    raise UserError(f"{part.kind} {part.source!r} was not checked: build parts with "
                                    "pipeline.data.media.user_parts, or pass them to prompt(images=..., audio=...)")
        self._calls += 1
        sample = Sample(id=f"prompt-{self._calls}", messages=tuple(messages))
        full = conversation(sample, self.config.session)
        records: list[TranscriptRecord] = []
        if self._tools is None:
            self._tools = tools_by_name(load_tools(self.config.session.tools))
        job = Job(sample, 0, list(full))
        answering = Answering(backend, self.config, self._tools, records.extend, self.config.config_hash(), sink)
        (final,) = answer(answering, [job])
        if final.status == "error":
            fix = "; clear the conversation (/clear) or shorten it" if "context" in (final.error or "") else ""
            raise UserError(f"{final.error}{fix}")
        added = job.messages[len(full):] + [Message("assistant", final.response)]  # tool steps, then the answer
        return PromptResponse(final.response, final.prompt_tokens, final.completion_tokens, final.finish_reason,
                              final.ttft_s, final.latency_s, added, records)

    def session(self, system_prompt: Optional[str] = None, autosave_path: Optional[str | Path] = None,
                history: Sequence[Message] = ()) -> "ChatSession":
        return ChatSession(self, system_prompt=system_prompt, autosave_path=autosave_path, history=history)


class ChatSession:
    """A conversation with a client's model that remembers, retries and saves itself.

    Each `send` adds the user's message and the model's answer (with its tool steps) to the history;
    `retry` replaces the last answer with a new one (each prompt has its own sample id, so sampling
    differs); `clear` forgets the turns; `set_system` changes the system prompt. With an autosave
    path the conversation is written (atomically) after every turn as a JSON list of {role, content}
    messages: the format `session.history` and `ChatSession.load` read. A turn that fails changes nothing."""

    def __init__(self, client: RuntimeClient, system_prompt: Optional[str] = None,
                 autosave_path: Optional[str | Path] = None, history: Sequence[Message] = ()) -> None:
        self.client = client
        self.system_prompt = system_prompt
        self.autosave_path = Path(autosave_path) if autosave_path else None
        self.messages: list[Message] = list(history)

    @classmethod
    def load(cls, client: RuntimeClient, path: str | Path, autosave: bool = True) -> "ChatSession":
        """Continue a saved conversation (its system message, if any, becomes the system prompt)."""
        messages = list(read_history(str(path)))
        system = messages.pop(0).content if messages and messages[0].role == "system" else None
        return cls(client, system, path if autosave else None, messages)

    def send(self, text: str, sink: Optional[StreamSink] = None, media: Sequence[MediaPart] = ()) -> PromptResponse:
        """`media`: checked image and audio parts (pipeline.data.media.user_parts) sent with the text."""
        user = Message("user", text, tuple(media))
        response = self.client.prompt_parts([user], history=self.context(), sink=sink)
        self.messages += [user, *response.messages]
        self._autosave()
        return response

    def retry(self, sink: Optional[StreamSink] = None) -> PromptResponse:
        """A new answer to the last user message, replacing the old one (kept if the new one fails)."""
        last_user = max((i for i, m in enumerate(self.messages) if m.role == "user"), default=None)
        if last_user is None or self.messages[-1].role != "assistant":
            raise ValueError("nothing to retry yet")
        user, kept = self.messages[last_user], self.messages
        self.messages = self.messages[:last_user]
        try:
            return self.send(user.content, sink, user.media)
        except BaseException:
            self.messages = kept
            raise

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
