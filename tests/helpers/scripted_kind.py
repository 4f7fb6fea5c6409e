"""A backend kind added the way docs/backends.md says, for tests/backends/test_registry.py: one module, one entry in
pipeline.backends.registry.KINDS, one conf file; nothing above pipeline/backends/ is edited.

`backend=scripted` answers "What is a+b?" with the sum (off by `backend.wrong_by`) through the fake backend,
so a run through the real entry point scores what its settings say."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.backends.base import BackendOption, BackendPlan, Capabilities, Identity
from pipeline.backends.fake import FakeBackend
from pipeline.backends.registry import BackendKind, KindPlan, PlanRequest
from pipeline.core.config import BackendConfig, ConfigError, RuntimeConfig
from pipeline.core.generation_settings import command_line_keys, effective_generation
from pipeline.core.records import ModelShape, ResolvedModel, RuntimePlan


@dataclass
class ScriptedSettings:
    wrong_by: int = 0  # added to every sum

    def validate(self) -> "ScriptedSettings":
        if not isinstance(self.wrong_by, int) or isinstance(self.wrong_by, bool):
            raise ConfigError("backend.wrong_by", self.wrong_by, "a whole number")
        return self


def resolve(runtime: RuntimeConfig, backend: BackendConfig) -> ResolvedModel:
    return ResolvedModel(
        reference=runtime.model, kind="scripted", alias=None, path="", repo_id=None, revision=None, commit=None,
        architecture="", model_type="", modalities=["text"], context_length=0, shape=ModelShape(0, 0, 0, 0, 0, 0, 0),
        has_tokenizer_json=False, has_chat_template=False, has_generation_config=False, weights_format="",
        weight_files=[], weight_bytes=0, parameters=0, parameters_exact=False, weights_dtype="", weights_digest=None)


def plan(request: PlanRequest) -> KindPlan:
    config, wrong_by = request.config, request.settings.wrong_by

    def answer(req):
        numbers = re.findall(r"(\d+)\s*\+\s*(\d+)", req.messages[-1].content)
        return str(int(numbers[-1][0]) + int(numbers[-1][1]) + wrong_by) if numbers else "?"

    backend = FakeBackend(answer, model=request.model.reference, batch_size=4)
    generation = effective_generation(config.generation, {}, command_line_keys(request.overrides))
    own = BackendPlan(identity=Identity(backend="scripted", model=request.model.reference),
                      capabilities=Capabilities(), options=[BackendOption("wrong_by", wrong_by, "backend.wrong_by")])
    runtime_plan = RuntimePlan(
        model=request.model, backend="scripted", device="script", dtype="none", batch_size=4, memory=None,
        reasons={"backend": "backend=scripted: sums, computed"}, num_samples=len(request.samples),
        longest_prompt_tokens=0, longest_prompt_sample="", max_new_tokens=config.generation.max_new_tokens,
        context_length=0, truncation=config.session.truncation, truncated_samples=[], generation=generation.values,
        generation_sources=generation.sources, backend_plan=own.to_dict())
    return KindPlan(runtime_plan, backend)


KIND = BackendKind(name="scripted", describe="sums, computed (a test's kind)", settings=ScriptedSettings, plan=plan,
                   resolve=resolve, in_process=False)
