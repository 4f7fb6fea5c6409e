"""backend=openai as a kind of the registry (pipeline.backends.registry): a model behind any OpenAI-compatible
server (vLLM, SGLang, llama.cpp's server, Ollama, transformers serve). runtime.model is the id the server serves;
resolve reads no files, and the plan asks the server. httpx loads only when the kind plans."""

from __future__ import annotations

from pipeline.backends.openai.config import OpenAIConfig
from pipeline.backends.registry import BackendKind, KindPlan, PlanRequest, settings
from pipeline.core.config import BackendConfig, RuntimeConfig
from pipeline.core.records import ModelShape, ResolvedModel
from pipeline.core.redact import hide_credentials


def resolve(runtime: RuntimeConfig, backend: BackendConfig) -> ResolvedModel:
    """The model a server serves under the id `runtime.model` (taken as written: no alias, no folder).
    Whether the server serves it, and its context length, are the plan's to ask."""
    served: OpenAIConfig = settings(backend)
    return ResolvedModel(
        reference=runtime.model, kind="served", alias=None, path="", repo_id=None, revision=None, commit=None,
        architecture="", model_type="", modalities=list(served.modalities), context_length=0,
        shape=ModelShape(0, 0, 0, 0, 0, 0, 0), has_tokenizer_json=False, has_chat_template=False,
        has_generation_config=False, weights_format="", weight_files=[], weight_bytes=0, parameters=0,
        parameters_exact=False, weights_dtype="", weights_digest=None, endpoint=hide_credentials(served.base_url))


def plan(request: PlanRequest) -> KindPlan:
    from pipeline.backends.openai.backend import OpenAIBackend
    from pipeline.backends.openai.plan import plan_served

    backend = OpenAIBackend(request.settings, request.model.reference)
    runtime_plan = plan_served(request.config, request.model, backend, request.samples, request.tools,
                               request.overrides)
    backend.generation = runtime_plan.generation  # requests are made from what the plan recorded
    return KindPlan(runtime_plan, backend)


def run_tags(plan) -> dict[str, str]:
    from pipeline.backends.openai.plan import served_tags

    return served_tags(plan)


KIND = BackendKind(
    name="openai",
    describe="a model behind an OpenAI-compatible server (backend.base_url; runtime.model is the served id)",
    settings=OpenAIConfig,
    plan=plan,
    runtime_hint="the server decides it",
    resolve=resolve,
    run_tags=run_tags,
    modalities_from="backend.modalities",
    passes_urls=True,
    in_process=False,
)
