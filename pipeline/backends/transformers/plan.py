"""Plan stage: decide backend, device, dtype, attention, batch size and offload, and check the run fits.

Input is what resolve found and the prompts' token counts (pipeline.data.prompts counts them with the
light tokenizer: no transformers, no torch on a CPU-only machine; prompts with images or audio are
counted by the model's processor, which expands each part into its tokens). Every decision is recorded with
its reason; every failed check raises a UserError naming the setting to change, so a run that
cannot work stops before any weight loads. The memory arithmetic lives in pipeline.backends.transformers.memory.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional

from pipeline.backends.transformers.backend_options import choose_backend_options
from pipeline.backends.local_model import added_tokens, check_tools, require_chat_template
from pipeline.backends.local_tokenizer import token_counter
from pipeline.data.chat_template import ChatTemplate
from pipeline.backends.transformers.gpus import accelerators, cuda_bf16_supported, device_gpu
from pipeline.backends.transformers.media_inputs import count as count_media_tokens
from pipeline.backends.transformers.media_inputs import load_processor
from pipeline.backends.transformers.memory import Need, free_memory, free_ram, need
from pipeline.core.console import gib
from pipeline.core.model_files import read_generation_config
from pipeline.backends.transformers.placement import parallel_job_device
from pipeline.core.config import Config, RuntimeConfig, parse_bytes
from pipeline.core.errors import UserError
from pipeline.core.generation_settings import command_line_keys, effective_generation
from pipeline.core.reasoning import thinking_support
from pipeline.core.records import MemoryEstimate, ResolvedModel, RuntimePlan, Sample
from pipeline.core.thinking import NewTokens, budget_warnings, new_tokens, plan_thinking
from pipeline.data.prompts import adds_special_tokens, count_prompt_tokens

BACKEND = "transformers"
AUTO_BATCH_WITHOUT_MEMORY_FIGURES = 8  # batch_size=auto when free memory cannot be known


def plan_from_config(config: Config, model: ResolvedModel, samples: list[Sample], tools: list[dict[str, Any]],
                     overrides: Iterable[str] = ()) -> tuple[RuntimePlan, Optional[ChatTemplate]]:
    """This kind's part of the plan stage (pipeline.stages.plan did the neutral work: the samples read, the
    scorer and the tools checked): count the prompts' tokens as they will be rendered, and plan.

    Returns the chat template too, so execute renders exactly what was planned."""
    require_chat_template(model, config.session)
    folder = Path(model.path)
    template = ChatTemplate.from_folder(folder) if config.session.chat_template else None
    schemas = check_tools(model, tools, template)
    support = thinking_support(template.source if template is not None else None, added_tokens(folder))
    thinking = plan_thinking(config.generation, support, model.reference, config.session.template_args)
    # the prompts are counted as they will be rendered: with the template variables that switch thinking
    session = replace(config.session, template_args={**config.session.template_args, **thinking.template_args})
    counter = token_counter(folder)
    media_counter = None
    if check_media(model, samples, config):  # before the processor loads: a part the model cannot take is refused
        processor = load_processor(model.path, config.runtime.trust_remote_code)
        special = adds_special_tokens(config.session)
        media_counter = lambda text, parts: count_media_tokens(processor, text, parts, special)  # noqa: E731
    tokens = count_prompt_tokens(samples, session, template, counter, config.generation.max_new_tokens,
                                 schemas or None, media_counter)
    if config.dataset.kind == "perplexity" and model.context_length:  # read in windows of the context: any length fits
        tokens = {key: min(count, model.context_length - config.generation.max_new_tokens) for key, count in tokens.items()}
    new = new_tokens(config.generation, thinking, lambda text: counter.count(text, add_special_tokens=False))
    planned = plan(model, config, samples, tokens, overrides, new)
    if config.dataset.kind == "perplexity":
        planned.checks.append(f"documents are scored in rolling windows of {model.context_length or 2048} tokens")
    if media_counter is not None:
        planned.checks.append("prompts with images or audio counted by the model's processor (each part's "
                              "placeholder expanded into its tokens)")
    planned.thinking = thinking.to_dict()
    planned.checks.append(f"thinking: {thinking.found}; this run: {thinking.how}")
    planned.warnings.extend(budget_warnings(config.generation, thinking))
    if schemas:
        planned.checks.append("the chat template shows the tools to the model")
        planned.warnings.append("prompt tokens and memory are counted for the first generation of each answer; "
                                "tool round trips make later prompts longer (execute checks each against the context)")
    if not counter.exact:
        planned.checks.append(f"prompt tokens counted from {counter.origin}; the model's own tokenizer class "
                              "rebuilds it on load and may count a few tokens differently in rare cases")
    return planned, template


def plan(model: ResolvedModel, config: Config, samples: list[Sample], prompt_tokens: dict[str, int],
         overrides: Iterable[str] = (), new: Optional[NewTokens] = None) -> RuntimePlan:
    """Decide how the run will go, or raise a UserError saying why it cannot. `new`: the most tokens one answer
    adds (pipeline.core.thinking.new_tokens: a thinking budget and continuations add to max_new_tokens)."""
    runtime, reasons = config.runtime, {}
    checks = [f"model folder {model.path} has config.json and {len(model.weight_files)} "
              f"{model.weights_format} weight file(s)"]
    warnings: list[str] = []
    if model.weights_format == "pickle":
        warnings.append("pickle weights loaded because runtime.allow_pickle=true; they can run code")

    if require_chat_template(model, config.session):
        checks.append("the tokenizer has a chat template")
    media = check_media(model, samples, config)
    checks.append(f"{media} image or audio part(s), each readable and of a kind the model takes "
                  f"({', '.join(model.modalities)})" if media else
                  f"every sample is {' or '.join(model.modalities)} the model accepts")

    max_new = config.generation.max_new_tokens
    new = new or NewTokens(max_new, f"generation.max_new_tokens={max_new}")
    longest_id = max(prompt_tokens, key=prompt_tokens.get)
    longest = prompt_tokens[longest_id]
    conversations = {s.id for s in samples if s.turns}
    truncated = _check_context(model, config, prompt_tokens, checks, warnings, conversations, new)
    with_media = {s.id for s in samples if any(m.media for m in s.messages)}
    for sample_id in truncated:
        if sample_id in with_media:  # cutting from the left would cut into an image's or clip's tokens
            raise UserError(f"sample {sample_id!r}: its prompt with images or audio ({prompt_tokens[sample_id]} tokens) "
                            f"+ {new.how} exceeds the model's context of "
                            f"{model.context_length} tokens, and such a prompt is never cut (session.truncation=left); "
                            "shorten it or lower generation.max_new_tokens")
    sequence_prompt = min(longest, model.context_length - new.total) if truncated else longest

    device, reasons["device"] = choose_device(runtime)
    dtype, reasons["dtype"] = choose_dtype(runtime, device, model.weights_dtype)
    attention, reasons["attn_implementation"] = choose_attention(runtime, device, dtype)
    completions = len(samples) * config.generation.num_samples
    estimate, batch, offload, max_memory = _fit(model, runtime, device, dtype, sequence_prompt, new.total,
                                                completions, reasons, warnings)
    speed_options, option_reasons = choose_backend_options(config, device, offload, batch, completions)
    reasons.update(option_reasons)
    reasons["max_memory"] = ("per-device budgets handed to accelerate for the offloaded weights" if max_memory
                             else "none: nothing is offloaded")
    backend_options = {"attn_implementation": attention, "offload": offload, "max_memory": max_memory, **speed_options}
    checks.append(f"estimated {gib(estimate.total_bytes)} needed on {device}, "
                  f"{gib(estimate.usable_bytes)} usable" if estimate.usable_bytes is not None
                  else f"estimated {gib(estimate.total_bytes)} needed on {device} (free memory unknown)")

    generation = effective_generation(config.generation, read_generation_config(Path(model.path)),
                                      command_line_keys(overrides))
    warnings.extend(generation.warnings)
    reasons["backend"] = "backend=transformers: the model runs in this process with transformers and torch"
    return RuntimePlan(
        model=model,
        backend=BACKEND,
        device=device,
        dtype=dtype,
        batch_size=batch,
        memory=estimate,
        reasons=reasons,
        num_samples=len(samples),
        longest_prompt_tokens=longest,
        longest_prompt_sample=longest_id,
        max_new_tokens=max_new,
        context_length=model.context_length,
        truncation=config.session.truncation,
        truncated_samples=truncated,
        generation=generation.values,
        generation_sources=generation.sources,
        checks=checks,
        warnings=warnings,
        backend_options=backend_options,
    )


def check_media(model: ResolvedModel, samples: list[Sample], config: Config) -> int:
    """How many image and audio parts the samples have, once each is one this backend can give the model (its
    kind was checked against the model's by pipeline.stages.plan); a UserError for the first that is not."""
    parts = 0
    for sample in samples:
        for message in sample.messages:
            for part in message.media:
                parts += 1
                if part.path is None and not part.source.startswith("data:"):
                    raise UserError(f"sample {sample.id!r}: {part.kind} {part.source!r} is a URL the {BACKEND} "
                                    "backend has not fetched; set runtime.allow_download=true to fetch it, or "
                                    "download it and name the file")
    if parts and not config.session.chat_template:
        raise UserError("session.chat_template=false sends plain text, which cannot carry the dataset's image or audio "
                        "parts; set session.chat_template=true")
    if parts and config.runtime.continuous_batching:
        raise UserError("runtime.continuous_batching=true takes token ids only, not the dataset's image or audio parts; "
                        "set runtime.continuous_batching=false")
    return parts


def _check_context(model: ResolvedModel, config: Config, prompt_tokens: dict[str, int], checks: list[str],
                   warnings: list[str], conversations: set[str], new: NewTokens) -> list[str]:
    """The ids to truncate from the left (session.truncation=left), or a UserError for prompts that do not fit
    with the most tokens an answer may add (`new`)."""
    max_new, context = new.total, model.context_length
    if not context:
        warnings.append("the model's config.json states no context length; prompt lengths were not checked")
        return []
    if max_new >= context:
        raise UserError(f"{new.how} leaves no room for a prompt in the model's context "
                        f"of {context} tokens; lower it")
    budget = context - max_new
    over = [sample_id for sample_id, tokens in prompt_tokens.items() if tokens > budget and sample_id not in conversations]
    growing = [sample_id for sample_id in conversations if prompt_tokens[sample_id] > budget]
    if growing and config.session.truncation != "left":
        warnings.append(f"{len(growing)} conversation(s) may outgrow the context of {context} by their last turn "
                        f"(counting {max_new} tokens per answer), first {growing[0]!r}; a turn that does not fit is "
                        "recorded as an error and ends its conversation")
    if not over:
        longest_single = max((i for i in prompt_tokens if i not in conversations), key=prompt_tokens.get, default=None)
        if longest_single is not None:
            checks.append(f"longest prompt ({prompt_tokens[longest_single]} tokens, sample {longest_single!r}) + "
                          f"{max_new} new tokens fits the context of {context}")
        return growing if config.session.truncation == "left" else []
    if config.session.truncation == "left":
        warnings.append(f"{len(over)} prompt(s) longer than {budget} tokens (context {context} - max_new_tokens "
                        f"{max_new}) will be cut from the left, flagged truncated in the transcript")
        return over + growing
    worst = max(over, key=prompt_tokens.get)  # the longest prompt may be a conversation, which is not refused
    raise UserError(f"sample {worst!r}: prompt of {prompt_tokens[worst]} tokens + "
                    f"{new.how} exceeds the model's context of {context} tokens "
                    f"({len(over)} sample(s) too long); shorten the prompts, lower generation.max_new_tokens, "
                    "or set session.truncation=left to keep each prompt's end")


def _fit(model: ResolvedModel, runtime: RuntimeConfig, device: str, dtype: str, prompt: int, new: int,
         completions: int, reasons: dict[str, str], warnings: list[str]) -> tuple[MemoryEstimate, int, str, Optional[dict]]:
    """Batch size, offload and the memory estimate that justifies them."""
    if runtime.memory_limit is not None:
        available, source = parse_bytes(runtime.memory_limit), f"runtime.memory_limit={runtime.memory_limit}"
    else:
        available, source = free_memory(device)
    usable = None if available is None else int(available * (1 - runtime.memory_margin))

    def needs(batch: int) -> Need:
        return need(model.parameters, model.shape, dtype, batch, prompt, new)

    ceiling = min(runtime.max_batch_size, completions)
    if runtime.batch_size != "auto":
        batch = min(runtime.batch_size, completions)
        reasons["batch_size"] = (f"runtime.batch_size={runtime.batch_size}" +
                                 (f", capped at the {completions} completions" if batch < runtime.batch_size else ""))
    elif usable is None:
        batch = min(AUTO_BATCH_WITHOUT_MEMORY_FIGURES, completions)
        reasons["batch_size"] = f"auto: free memory unknown, so a cautious {batch}"
    else:
        batch = max((b for b in range(1, ceiling + 1) if needs(b).total <= usable), default=1)
        reasons["batch_size"] = (f"auto: the largest batch up to {ceiling} (runtime.max_batch_size, completions to make) "
                                 f"whose estimate fits {gib(usable)} usable ({runtime.memory_margin:.0%} margin)")

    estimate, offload, max_memory = needs(batch), "none", None
    if usable is None or estimate.total <= usable:
        reasons["offload"] = ("none: the estimate fits the device" if usable is not None
                              else "none: free memory unknown, nothing to compare with")
    else:
        numbers = (f"needs {gib(estimate.total)} (weights {gib(estimate.weights)} in {dtype}, KV cache "
                   f"{gib(estimate.kv_cache)} for {batch} x {prompt + new} tokens, activations "
                   f"{gib(estimate.activations)}) but {device} has {gib(usable)} usable ({gib(available)} from "
                   f"{source}, {runtime.memory_margin:.0%} kept free)")
        if batch > 1 and needs(1).total <= usable:
            raise UserError(f"runtime.batch_size={runtime.batch_size}: the run {numbers}; lower runtime.batch_size "
                            "or set it to auto")
        room = usable - estimate.kv_cache - estimate.activations
        offload, max_memory, reasons["offload"] = _offload(model, runtime, device, estimate.weights, room, numbers)
        warnings.append(f"the weights do not fit {device}: offloading to {offload} ({reasons['offload']}); "
                        "generation will be slower")
        estimate = Need(room, estimate.kv_cache, estimate.kv_per_token, estimate.activations)
    return MemoryEstimate(
        device=device, weights_bytes=estimate.weights, kv_cache_bytes=estimate.kv_cache,
        kv_bytes_per_token=estimate.kv_per_token, activation_bytes=estimate.activations,
        total_bytes=estimate.total, batch_size=batch, sequence_tokens=prompt + new,
        available_bytes=available, available_source=source, margin=runtime.memory_margin, usable_bytes=usable,
        fits=usable is None or estimate.total <= usable,
    ), batch, offload, max_memory


def _offload(model: ResolvedModel, runtime: RuntimeConfig, device: str, weights: int, room: int,
             numbers: str) -> tuple[str, dict[str, int], str]:
    """(cpu or disk, accelerate's max_memory budgets, why) for weights that do not fit, or a UserError."""
    if runtime.offload == "none" or room <= 0:
        fix = ("set runtime.offload=auto to keep part of the weights in CPU memory or on disk, "
               if runtime.offload == "none" else "")
        raise UserError(f"model {model.reference!r} does not fit: the run {numbers}; {fix}use a smaller dtype, "
                        "a smaller model, fewer generation.max_new_tokens, or another runtime.device")
    if device == "cpu" and runtime.offload == "cpu":
        raise UserError(f"runtime.offload=cpu cannot help on the CPU: the run {numbers}; use runtime.offload=disk")
    rest = weights - room
    budgets = {device_key(device): room}
    if device == "cpu":
        return "disk", budgets, f"{gib(room)} of {gib(weights)} weights stay in memory, {gib(rest)} are read from disk"
    ram, _ = free_ram()
    cpu_room = int((ram or 0) * (1 - runtime.memory_margin))
    budgets["cpu"] = cpu_room
    if rest <= cpu_room and runtime.offload in ("auto", "cpu"):
        return "cpu", budgets, f"{gib(room)} of {gib(weights)} weights on {device}, {gib(rest)} in CPU memory"
    if runtime.offload == "cpu":
        raise UserError(f"runtime.offload=cpu: {gib(rest)} of weights do not fit CPU memory ({gib(ram)} free) "
                        "either; use runtime.offload=disk or auto")
    return "disk", budgets, (f"{gib(room)} of {gib(weights)} weights on {device}, {gib(cpu_room)} in CPU memory, "
                             f"{gib(rest - cpu_room)} read from disk")


def device_key(device: str) -> Any:
    """The key accelerate's max_memory uses for a device: 0 for cuda:0, "cpu", "mps"."""
    if device.startswith("cuda"):
        return int(device.split(":")[1]) if ":" in device else 0
    return device


def choose_device(runtime: RuntimeConfig) -> tuple[str, str]:
    if runtime.device == "cpu":
        return "cpu", "runtime.device=cpu"
    cuda, mps, count = accelerators()
    if runtime.device == "auto":
        if cuda:
            spread = parallel_job_device(count)
            if spread:
                return spread
            return "cuda", f"auto: CUDA is available ({count} device(s)); the first is used"
        if mps:
            return "mps", "auto: Apple MPS is available and CUDA is not"
        return "cpu", "auto: no CUDA or MPS device here"
    available = ["cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])
    base = runtime.device.split(":", 1)[0]
    if base not in available:
        raise UserError(f"runtime.device={runtime.device!r}: no such device here (available: {', '.join(available)})")
    if base == "cuda" and ":" in runtime.device and int(runtime.device.split(":")[1]) >= count:
        raise UserError(f"runtime.device={runtime.device!r}: only {count} CUDA device(s) here")
    return runtime.device, f"runtime.device={runtime.device}"


def choose_dtype(runtime: RuntimeConfig, device: str, weights_dtype: str = "",
                 cpu_flags: Optional[set[str]] = None) -> tuple[str, str]:
    """The dtype to load in, and why. `cpu_flags` are the CPU's feature flags (read from /proc/cpuinfo
    when not given)."""
    if runtime.dtype != "auto":
        if runtime.dtype == "bfloat16" and device == "mps":
            raise UserError("runtime.dtype='bfloat16' is not supported on mps; use float16 or float32")
        return runtime.dtype, f"runtime.dtype={runtime.dtype}"
    if device.startswith("cuda"):
        gpu = device_gpu(device)
        if gpu is not None:
            named = f"{gpu.name} (compute capability {gpu.capability[0]}.{gpu.capability[1]}, from NVML)"
            return (("bfloat16", f"auto: {named} supports bfloat16 (the range of float32 at half the memory)")
                    if gpu.bf16 else ("float16", f"auto: {named} lacks bfloat16, so float16"))
        if cuda_bf16_supported():
            return "bfloat16", "auto: this GPU supports bfloat16 (the range of float32 at half the memory)"
        return "float16", "auto: this GPU lacks bfloat16, so float16"
    if device == "mps":
        return "float16", "auto: float16 on Apple MPS"
    if weights_dtype != "bfloat16":
        return "float32", "auto: float32 on the CPU (half precision is slow there); set runtime.dtype to change it"
    native = sorted(NATIVE_BF16_FLAGS & (cpu_flags if cpu_flags is not None else _cpu_flags()))
    if native:
        return "bfloat16", (f"auto: the checkpoint is bfloat16 and this CPU computes in bfloat16 natively "
                            f"({', '.join(native)}): kept, not widened to float32 (about twice the decode speed)")
    return "float32", ("auto: the checkpoint is bfloat16, but this CPU has no native bfloat16 (no avx512_bf16 or "
                       "AMX), where it is slow: widened to float32; set runtime.dtype to change it")


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs that compute bfloat16 natively


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_attention(runtime: RuntimeConfig, device: str, dtype: str) -> tuple[str, str]:
    flash_installed = importlib.util.find_spec("flash_attn") is not None
    if runtime.attn_implementation == "flash_attention_2":
        if not device.startswith("cuda") or dtype not in ("float16", "bfloat16"):
            raise UserError("runtime.attn_implementation=flash_attention_2 needs a CUDA device and float16 or "
                            f"bfloat16 (planned: {device}, {dtype})")
        if not flash_installed:
            raise UserError("runtime.attn_implementation=flash_attention_2 needs the flash-attn package "
                            "(pip install flash-attn); or use sdpa")
    if runtime.attn_implementation != "auto":
        return runtime.attn_implementation, f"runtime.attn_implementation={runtime.attn_implementation}"
    if device.startswith("cuda") and dtype in ("float16", "bfloat16") and flash_installed:
        return "flash_attention_2", "auto: flash-attn is installed and the GPU runs in half precision"
    return "sdpa", "auto: torch's scaled_dot_product_attention (the load falls back to eager where a model lacks it)"

