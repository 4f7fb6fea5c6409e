"""Plan stage for a model behind a server (`backend=openai`): ask the server, before anything is created.

The dataset's first requests are made as execute will make them (conversation, tools, settings)
and handed to the backend's own plan (pipeline.backends.openai): GET /models within
backend.timeout_s, the model served, its context length where the server says it, prompt tokens
from the server's /tokenize, a local tokenizer or an estimate. Every refusal is a UserError, so the
runner stops before the MLflow run opens or any request is sent for generation.

The run's RuntimePlan has the in-process model's shape (device, dtype, memory estimate, ...), which
consumers read (summarize, MLflow params and tags, report); for a server those decisions are the
server's, so they are recorded as such (device "server", dtype and attention "server-decides", no
memory figures) and the backend's own plan (identity with the masked base URL, what the server
reports, options with reasons, token source) is kept whole under `backend_plan`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from pipeline.backends.base import BackendPlan, Request
from pipeline.core.config import Config, SessionConfig
from pipeline.core.errors import UserError
from pipeline.core.generation_settings import LIBRARY, NEUTRAL, command_line_keys, effective_generation
from pipeline.core.reasoning import THINK_TAGS, thinking_support
from pipeline.core.records import Message, ResolvedModel, RuntimePlan, Sample
from pipeline.core.thinking import NewTokens, ThinkingPlan, budget_warnings, new_tokens, plan_thinking
from pipeline.data.prompts import conversation

SERVER = "server"  # RuntimePlan.device of a served model: no device of ours holds it
SERVER_DECIDES = "server-decides"  # the dtype: the server's own choice, not reported over the API
SERVER_DEFAULT = "the server's default"  # a generation setting left null: not sent, the server's value applies
UNSENT = ("min_p", "repetition_penalty")  # generation settings pipeline.backends.openai does not send


def plan_served(config: Config, model: ResolvedModel, backend: Any, samples: list[Sample],
                schemas: list[dict[str, Any]], overrides: Iterable[str] = ()) -> RuntimePlan:
    """The plan for `backend` (an OpenAIBackend for `model`) and the samples execute will answer (read, with the
    scorer and the tools checked, by pipeline.stages.plan)."""
    if config.dataset.kind == "multiple_choice":
        if config.session.chat_template:  # /completions takes raw text; the server's chat template is not applied
            raise UserError("dataset.kind=multiple_choice with backend=openai scores raw text through /completions; "
                            "set session.chat_template=false")
    else:
        _check_session(config.session)
    generation = _generation(config, overrides)
    backend.thinking = plan_served_thinking(config, backend)
    backend.parts = _in_parts(config, backend, samples)
    if backend.parts:
        backend.thinking.how += ("; the prompt rendered here with backend.tokenizer's chat template and sent in parts "
                                 "to /v1/completions (the thinking, then the answer)")
        new = new_tokens(config.generation, backend.thinking,
                         lambda text: backend._local_files()[1].count(text, add_special_tokens=False))
    else:
        new = NewTokens(config.generation.max_new_tokens, f"generation.max_new_tokens={config.generation.max_new_tokens}")
    requests = [_first_request(sample, config, schemas, generation) for sample in samples]
    served: BackendPlan = backend.plan(requests)  # UserError: unreachable, not OpenAI-shaped, key refused, not served
    counts = dict(zip((s.id for s in samples), served.prompt_tokens))
    longest_id = max(counts, key=counts.get) if counts else ""
    longest = counts.get(longest_id, 0)
    max_new = config.generation.max_new_tokens
    context = served.context_length or 0
    most = new.total  # the most one answer adds: a thinking budget and continuations come on top of max_new_tokens
    checks = list(served.checks)
    if config.dataset.kind == "multiple_choice":
        checks.append(backend.check_prompt_logprobs())
    warnings = list(served.warnings) + generation["warnings"] + budget_warnings(config.generation, backend.thinking)
    if context and most >= context:
        raise UserError(f"{new.how} leaves no room for a prompt in the served model's "
                        f"context of {context} tokens; lower it")
    if context and served.token_source != "estimate":
        over = [sid for sid, tokens in counts.items() if tokens + most > context]
        if over:
            worst = max(over, key=counts.get)
            raise UserError(f"sample {worst!r}: prompt of {counts[worst]} tokens + {new.how} "
                            f"exceeds the served model's context of {context} tokens ({len(over)} sample(s) too long, "
                            f"counted by {served.token_source}); shorten the prompts or lower generation.max_new_tokens")
    if schemas:
        checks.append("the tools are sent as the API's tools")
    checks.append(f"thinking: {backend.thinking.found}; this run: {backend.thinking.how}")
    concurrency = backend.config.max_concurrency
    if generation["values"].get("do_sample") and concurrency > 1:
        warnings.append(f"sampling with backend.max_concurrency={concurrency}: each request's seed is sent, but the "
                        "answers repeat run to run only on a server that seeds each request on its own (vLLM, SGLang); "
                        "transformers serve seeds one global generator, so requests in flight together change each "
                        "other's draws (backend.max_concurrency=1 makes them repeat there)")
    reasons = {
        "backend": "backend=openai: the model is served at " + (served.identity.endpoint or ""),
        "device": "the server holds the model; its device is the server's",
        "dtype": "the server loads the weights in its own dtype (not reported over the API)",
        "batch_size": f"backend.max_concurrency={concurrency}: requests in flight at once, and how many execute "
                      "hands over at a time (each batch's records are written as it completes)",
        "memory": "not estimated: the server's memory is the server's to manage",
    }
    return RuntimePlan(
        model=model, backend=backend.name, device=SERVER, dtype=SERVER_DECIDES, batch_size=concurrency, memory=None,
        reasons=reasons, num_samples=len(samples), longest_prompt_tokens=longest, longest_prompt_sample=longest_id,
        max_new_tokens=max_new, context_length=context, truncation=config.session.truncation, truncated_samples=[],
        generation=generation["values"], generation_sources=generation["sources"], checks=checks, warnings=warnings,
        tools=schemas, backend_plan=served.to_dict(), thinking=backend.thinking.to_dict(),
    )


def plan_served_thinking(config: Config, backend: Any) -> ThinkingPlan:
    """How thinking is switched on the server: the template variable enable_thinking as chat_template_kwargs
    (vLLM, SGLang), reasoning_effort as the API's field. Checked against the chat template of
    backend.tokenizer where one is named; otherwise sent as asked, unverified."""
    generation = config.generation
    folder = backend.config.tokenizer
    parts = [f"generation.thinking_budget={generation.thinking_budget}"] if generation.thinking_budget is not None \
        else []
    parts += [f"generation.continue_on_length={generation.continue_on_length}"] if generation.continue_on_length else []
    if parts and not folder:  # before any request: the prompt must be rendered here, with the model's own template
        raise UserError(f"{' and '.join(parts)} with backend=openai: the prompt is rendered here and sent in parts to "
                        "the server's /v1/completions, which needs the served model's chat template and tokenizer; "
                        "name a local folder with them in backend.tokenizer, or leave "
                        f"{'them' if len(parts) > 1 else 'it'} unset")
    if folder:
        from pipeline.data.chat_template import ChatTemplate  # jinja only, no torch
        from pipeline.backends.local_model import added_tokens

        if not Path(folder).expanduser().is_dir():
            raise UserError(f"backend.tokenizer={folder!r} is not a folder: name a local model folder with the served "
                            "model's tokenizer, or null")
        template = ChatTemplate.from_folder(Path(folder).expanduser())
        if parts and template is None:
            raise UserError(f"{' and '.join(parts)} with backend=openai renders the prompt with the chat template of "
                            f"backend.tokenizer={folder!r}, which has none; name the served model's own folder")
        support = thinking_support(template.source if template else None, added_tokens(Path(folder).expanduser()))
        planned = plan_thinking(generation, support, backend.model)
        markers = planned.reading_markers
        if generation.thinking_budget is not None and planned.can_think and planned.mode != "off" \
                and (markers is None or markers.format != "tags"):
            raise UserError(f"generation.thinking_budget={generation.thinking_budget}: with backend=openai a budget "
                            f"needs thinking tags, and model {backend.model!r} marks its thinking with "
                            f"{markers.describe() if markers else 'nothing known'}; leave it null, or use "
                            "backend=transformers")
        return planned
    args = {} if generation.thinking == "auto" else {"enable_thinking": generation.thinking == "on"}
    how = [f"chat_template_kwargs enable_thinking={str(args['enable_thinking']).lower()}"] if args else []
    if generation.reasoning_effort is not None:
        how.append(f"reasoning_effort={generation.reasoning_effort}")
    return ThinkingPlan(mode=generation.thinking, can_think=True, template_args=args,
                        markers={"format": "tags", "open": THINK_TAGS.open, "close": THINK_TAGS.close},
                        reasoning_effort=generation.reasoning_effort,
                        found="not verified (the server's chat template is not visible; backend.tokenizer names "
                              "none): the server's reasoning field, else <think> tags in the text",
                        how="; ".join(how) or "the server's default")


def _in_parts(config: Config, backend: Any, samples: list[Sample]) -> bool:
    """Whether requests go to /completions in parts: always for a thinking budget (on a model that thinks in this
    run) or continue_on_length; and whenever backend.tokenizer is named and the model thinks, so that
    max_new_tokens counts answer tokens and the counts are the same as in process. Prompts with images or
    audio cannot go as text: refused for a budget or continuation, otherwise sent through the chat API."""
    generation = config.generation
    asked = (generation.thinking_budget is not None and backend.thinks) or generation.continue_on_length > 0
    media = next((sample for sample in samples if any(m.media for m in sample.messages)), None)
    if asked and media is not None:
        raise UserError(f"sample {media.id!r} has an image or audio part, and with generation.thinking_budget or "
                        "continue_on_length backend=openai sends the prompt as text to /v1/completions; leave both "
                        "unset for this dataset, or use backend=transformers")
    return asked or (bool(backend.config.tokenizer) and backend.thinks and media is None)


def _check_session(session: SessionConfig) -> None:
    """Session settings that only a prompt we render ourselves can honour: a server renders its own."""
    if not session.chat_template:
        raise UserError("session.chat_template=false: a server always applies its own chat template, so raw prompts "
                        "cannot be sent; use backend=transformers for them")
    if session.prefill:
        raise UserError(f"session.prefill={session.prefill!r}: the chat completions API has no way to start the "
                        "answer; leave session.prefill empty with backend=openai")
    if session.template_args:
        raise UserError(f"session.template_args={dict(session.template_args)}: chat template variables are not sent "
                        "to the server; leave them empty with backend=openai")
    if session.truncation == "left":
        raise UserError("session.truncation=left: a server cannot cut prompts from the left; use session.truncation="
                        "error (too long a prompt is refused in the plan, or becomes an error record)")


def _generation(config: Config, overrides: Iterable[str]) -> dict[str, Any]:
    """The settings requests are made from: the config's values; a null stays null (not sent: the server's default)."""
    effective = effective_generation(config.generation, {}, command_line_keys(overrides))
    values, sources = dict(effective.values), dict(effective.sources)
    for key, source in effective.sources.items():
        if source == LIBRARY:
            values[key], sources[key] = None, SERVER_DEFAULT
        elif key in NEUTRAL and values[key] == NEUTRAL[key]:  # top_k=0 filters nothing; servers may refuse the field
            values[key], sources[key] = None, f"{source}: {effective.values[key]} filters nothing, so it is not sent"
    for key in UNSENT:
        if values[key] is not None and values[key] != 1.0:  # repetition_penalty 1.0 is no penalty
            raise UserError(f"generation.{key}={values[key]}: the chat completions API has no such field, so the server "
                            f"would never see it; leave it null with backend=openai")
        values[key], sources[key] = None, SERVER_DEFAULT if values[key] is None else sources[key]
    return {"values": values, "sources": sources, "warnings": effective.warnings}


def _first_request(sample: Sample, config: Config, schemas: list[dict], generation: dict[str, Any]) -> Request:
    """The first request execute sends for `sample` (for a scripted conversation: its first turn)."""
    messages = conversation(sample, config.session)
    if sample.turns:
        messages.append(Message("user", sample.turns[0].content))
    return Request(messages=messages, max_new_tokens=config.generation.max_new_tokens, tools=list(schemas),
                   stop=list(generation["values"].get("stop") or []), key=sample.id)


def served_tags(plan: RuntimePlan) -> dict[str, str]:
    """MLflow tags of a served model: where it is served (credentials masked) and what the server reports of it;
    none for the in-process model."""
    identity = plan.backend_plan.get("identity") if plan.backend_plan else None
    if not identity:
        return {}
    reported = json.dumps(identity.get("reported") or {}, sort_keys=True, default=str)
    return {"model.endpoint": identity.get("endpoint") or "", "model.served_id": identity.get("model") or "",
            "model.reported": reported[:4000]}  # MLflow keeps tag values to 5000 characters
