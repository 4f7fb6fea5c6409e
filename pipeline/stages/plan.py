"""Plan stage: decide backend, device, dtype and batch size, and check the run will fit.

Only the tokenizer is read (to count prompt tokens); no weights are loaded. Every check that
fails raises a UserError naming the setting to change, so a bad run stops before load.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pipeline.config import Config, RuntimeConfig
from pipeline.errors import UserError
from pipeline.prompts import adds_special_tokens, conversation, render
from pipeline.records import ResolvedModel, RuntimePlan, Sample

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def plan(model: ResolvedModel, config: Config, samples: list[Sample], tokenizer: Any) -> RuntimePlan:
    device = choose_device(config.runtime)
    dtype = choose_dtype(config.runtime, device)
    checks = [f"model folder {model.path} has config.json and {len(model.weight_files)} safetensors file(s)"]
    warnings: list[str] = []

    if config.session.chat_template:
        if not model.has_chat_template:
            raise UserError(f"session.chat_template=true but model {model.reference!r} has no chat template; "
                            "set session.chat_template=false to send plain text")
        checks.append("the tokenizer has a chat template")

    prompt_tokens = {s.id: len(tokenizer(render(tokenizer, conversation(s, config.session), config.session),
                                         add_special_tokens=adds_special_tokens(config.session))["input_ids"])
                     for s in samples}
    longest_id = max(prompt_tokens, key=prompt_tokens.get)
    longest = prompt_tokens[longest_id]
    max_new = config.generation.max_new_tokens
    if model.context_length:
        if longest + max_new > model.context_length:
            raise UserError(
                f"sample {longest_id!r}: prompt of {longest} tokens + generation.max_new_tokens={max_new} "
                f"exceeds the model's context of {model.context_length} tokens; shorten the prompt or "
                "lower generation.max_new_tokens")
        checks.append(f"longest prompt ({longest} tokens, sample {longest_id!r}) + {max_new} new tokens "
                      f"fits the context of {model.context_length}")
    else:
        warnings.append("the model's config.json states no context length; prompt lengths were not checked")

    generation = asdict(config.generation)
    generation["do_sample"] = not config.generation.greedy
    if config.generation.greedy and (config.generation.top_p < 1 or config.generation.top_k > 0):
        warnings.append("top_p/top_k are ignored: temperature 0 decodes greedily")

    return RuntimePlan(
        model=model,
        backend="transformers",
        device=device,
        dtype=dtype,
        batch_size=min(config.runtime.batch_size, len(samples)),
        num_samples=len(samples),
        longest_prompt_tokens=longest,
        max_new_tokens=max_new,
        context_length=model.context_length,
        generation=generation,
        estimated_weight_bytes=model.parameters * DTYPE_BYTES[dtype],
        checks=checks,
        warnings=warnings,
    )


def choose_device(runtime: RuntimeConfig) -> str:
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if runtime.device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    available = ["cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])
    base = runtime.device.split(":", 1)[0]
    if base not in available:
        raise UserError(f"runtime.device={runtime.device!r}: no such device here (available: {', '.join(available)})")
    if base == "cuda" and ":" in runtime.device and int(runtime.device.split(":")[1]) >= torch.cuda.device_count():
        raise UserError(f"runtime.device={runtime.device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return runtime.device


def choose_dtype(runtime: RuntimeConfig, device: str) -> str:
    if runtime.dtype != "auto":
        if runtime.dtype == "bfloat16" and device.startswith("mps"):
            raise UserError("runtime.dtype='bfloat16' is not supported on mps; use float16 or float32")
        return runtime.dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "mps":
        return "float16"
    return "float32"
