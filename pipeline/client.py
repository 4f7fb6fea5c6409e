"""The Python API: `RuntimeClient`, the same resolve -> plan -> load -> generate path as the CLI.

    from pipeline.client import RuntimeClient
    client = RuntimeClient.from_overrides(["runtime.model=demo"])
    print(client.prompt("What is 12+30?").text)           # loads once, then reuses the model
    chat = client.session(system_prompt="Be brief.", autosave_path="chat.json")
    print(chat.send("What is 25+25?").text)

Settings come from the project's Hydra configs with the overrides a command line would take, so a
library call and `python -m pipeline` with the same overrides make the same plan. The loaded
runtime is kept and reused by every prompt and session until the client is dropped. Prompts are
checked against the model's context when they are sent (the plan cannot know them in advance): a
conversation that no longer fits is a UserError that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pipeline.answering.loop import Answering, Job, answer, tools_by_name
from pipeline.answering.tools import Tool, load_tools
from pipeline.backends.transformers.backend import TransformersBackend
from pipeline.backends.transformers.chat_template import ChatTemplate
from pipeline.backends.transformers.load import load
from pipeline.backends.transformers.plan import plan as make_plan
from pipeline.backends.transformers.plan import require_chat_template, tool_schemas
from pipeline.core.config import CONF_DIR, Config, register, to_config
from pipeline.core.errors import UserError
from pipeline.core.records import (
    LoadedRuntime,
    Message,
    ResolvedModel,
    RuntimePlan,
    Sample,
    TranscriptRecord,
)
from pipeline.core.streaming import StreamSink
from pipeline.data.media import user_parts
from pipeline.data.prompts import conversation
from pipeline.stages.resolve import resolve

if TYPE_CHECKING:
    from pipeline.session import ChatSession


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
    """resolve, plan, describe_plan, load, prompt, prompt_parts and session over one config."""

    def __init__(self, config: Config) -> None:
        if config.backend.name != "transformers":  # not wired yet: say so rather than fail later in library words
            raise UserError(f"backend={config.backend.name}: the Python API and python -m pipeline.chat run the "
                            "model in this process only, for now; run a served model with python -m pipeline "
                            f"backend={config.backend.name} ...")
        self.config = config
        self._resolved: Optional[ResolvedModel] = None
        self._plan: Optional[RuntimePlan] = None
        self._runtime: Optional[LoadedRuntime] = None
        self._tools: Optional[dict[str, Tool]] = None
        self._calls = 0  # each prompt gets its own sample id, so sampled prompts differ

    @classmethod
    def from_overrides(cls, overrides: Sequence[str] = ()) -> "RuntimeClient":
        """A client for the project's configs with command-line style overrides applied."""
        from hydra import compose, initialize_config_dir

        register()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return cls(to_config(compose(config_name="config", overrides=list(overrides))))

    def resolve(self) -> ResolvedModel:
        if self._resolved is None:
            self._resolved = resolve(self.config.runtime, self.config.backend)
        return self._resolved

    def plan(self) -> RuntimePlan:
        """The plan for prompts of this session, one at a time (batch size 1)."""
        if self._plan is None:
            model = self.resolve()
            require_chat_template(model, self.config.session)
            template = ChatTemplate.from_folder(Path(model.path)) if self.config.session.chat_template else None
            schemas = tool_schemas(model, self.config.session, template)
            probe = Sample(id="probe", messages=(Message("user", ""),))
            self.config.runtime.batch_size = 1
            self._plan = make_plan(model, self.config, [probe], {"probe": 1})
            self._plan.tools = schemas
        return self._plan

    def describe_plan(self) -> dict[str, Any]:
        return self.plan().to_dict()

    def load(self) -> LoadedRuntime:
        if self._runtime is None:
            template = ChatTemplate.from_folder(Path(self.resolve().path)) if self.config.session.chat_template else None
            self._runtime = load(self.plan(), template, self.config.runtime.trust_remote_code)
        return self._runtime

    def prompt(self, text: str, *, images: Sequence[str] = (), audio: Sequence[str] = (),
               system_prompt: Optional[str] = None, sink: Optional[StreamSink] = None) -> PromptResponse:
        """One user message (after the session's system prompt, or `system_prompt`) -> the model's answer.

        `images` and `audio` are paths (any you name, within dataset.max_media_mb) or data: URLs,
        checked and decoded once here; a multimodal model takes them through its processor."""
        dataset = self.config.dataset
        media = user_parts(images, audio, dataset.max_media_mb, self.config.runtime.allow_download)
        messages = [Message("system", system_prompt)] if system_prompt is not None else []
        return self.prompt_parts([Message("user", text, media)], history=messages, sink=sink)

    def prompt_parts(self, parts: Sequence[Message], history: Sequence[Message] = (),
                     sink: Optional[StreamSink] = None) -> PromptResponse:
        """Continue `history` + `parts` (messages, possibly with media) with one answer."""
        messages = list(history) + list(parts)
        model = self.resolve()
        for message in messages:
            for part in message.media:
                if part.kind not in model.modalities:
                    raise UserError(f"model {model.reference!r} ({model.architecture}) takes "
                                    f"{' and '.join(model.modalities)} only, not {part.kind}; use a model that "
                                    f"accepts {part.kind}s")
                if part.path is None and not part.source.startswith("data:") and "://" in part.source:
                    raise UserError(f"{part.kind} {part.source!r} is a URL; the model in this process reads local "
                                    "files and data: URLs only: download it and name the file")
                if part.sha256 is None:  # a part built by the caller, not by prompt(): check it the same way
                    raise UserError(f"{part.kind} {part.source!r} was not checked: build parts with "
                                    "pipeline.data.media.user_parts, or pass them to prompt(images=..., audio=...)")
        runtime = self.load()
        self._calls += 1
        sample = Sample(id=f"prompt-{self._calls}", messages=tuple(messages))
        full = conversation(sample, self.config.session)
        records: list[TranscriptRecord] = []
        if self._tools is None:
            self._tools = tools_by_name(load_tools(self.config.session.tools))
        job = Job(sample, 0, list(full))
        backend = TransformersBackend.from_runtime(runtime, self.config.session)
        answering = Answering(backend, self.config, self._tools, records.extend, self.config.config_hash(), sink)
        (final,) = answer(answering, [job])
        if final.status == "error":
            raise UserError(f"{final.error}; clear the conversation (/clear) or shorten it")
        added = job.messages[len(full):] + [Message("assistant", final.response)]  # tool steps, then the answer
        return PromptResponse(final.response, final.prompt_tokens, final.completion_tokens, final.finish_reason,
                              final.ttft_s, final.latency_s, added, records)

    def session(self, system_prompt: Optional[str] = None, autosave_path: Optional[str | Path] = None,
                history: Sequence[Message] = ()) -> "ChatSession":
        from pipeline.session import ChatSession

        return ChatSession(self, system_prompt=system_prompt, autosave_path=autosave_path, history=history)
