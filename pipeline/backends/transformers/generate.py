"""One batch through `model.generate`: encode the prompts, sample and time each row, decode and cut.

Greedy at temperature 0, otherwise each row is sampled from its own seed (pipeline.core.streaming), so
a prompt's output does not depend on its batch. Each completion carries its time to first token
and its own latency. A completion ends at the end-of-turn token or at the first stop string.
The plan's backend options apply here: a static KV cache (prompts padded to a multiple of
STATIC_PAD, so a compiled step sees few shapes), torch.compile, or transformers' continuous
batching (`generate_batch`: the whole batch of greedy prompts at once, timed from its per-token
timestamps). A batch with images or audio is encoded by the model's processor (media_inputs.encode),
rows with different numbers of parts together. Knows nothing of samples, tools or transcripts: it
takes prompts and gives completions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

from pipeline.backends.transformers.sampling import GenerationObserver, PerRowSampler
from pipeline.backends.transformers.media_inputs import encode
from pipeline.core.records import LoadedRuntime
from pipeline.core.streaming import StreamSink

STATIC_PAD = 16  # with a static cache, prompts are padded to a multiple of this: fewer shapes to compile


class Prompted(Protocol):
    """What a generation needs to know of one prompt (the transformers backend's encoded requests)."""

    prompt: str
    prompt_ids: list[int]  # the prompt's tokens as encoded for the batching, when known (else empty)
    seed: Optional[int]  # this row's own sampling seed (pipeline.core.streaming.sample_seed); None when greedy
    # and, optionally, `media`: the prompt's images and audio (MediaParts), in the order of its placeholders


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str
    ttft_s: float = 0.0
    latency_s: float = 0.0
    truncated: bool = False  # its prompt was cut from the left to fit the context
    ids: list[int] = field(default_factory=list)  # the generated tokens, the end of turn left out


def generate_batch(runtime: LoadedRuntime, batch: Sequence[Prompted], settings: dict[str, Any], special: bool,
                   sink: Optional[StreamSink] = None, thinking: Any = None) -> tuple[list[int], list[Completion]]:
    """Generate for one batch of prompts with one set of generation `settings` (the plan's
    `generation` shape); `special`: the tokenizer adds its special tokens; `thinking`: a factory
    of the thinking-budget logits processor (pipeline.backends.transformers.thinking), given the
    padded prompt length. Returns (prompt token counts, completions)."""
    tokenizer, plan = runtime.tokenizer, runtime.plan
    started = time.perf_counter()
    prompts = [job.prompt for job in batch]
    if any(getattr(job, "media", ()) for job in batch):
        return _generate_media(runtime, batch, settings, special, sink, started, thinking)
    known = [job.prompt_ids for job in batch]
    if not all(known):  # a caller that did not encode the prompts for batching
        known = tokenizer(prompts, add_special_tokens=special)["input_ids"]
    cut = [False] * len(batch)
    limit: dict[str, Any] = {}
    if plan.truncation == "left" and plan.context_length:
        budget = plan.context_length - settings["max_new_tokens"]
        cut = [len(ids) > budget for ids in known]
        limit = {"truncation": True, "max_length": budget}
    options = plan.backend_options
    static = options.get("cache_implementation") == "static"
    if any(cut):  # the tokenizer cuts from the left and keeps the special tokens where they belong
        ids = tokenizer(prompts, add_special_tokens=special, **limit)["input_ids"]
    else:
        ids = known
    if options.get("continuous_batching"):
        return _continuous(runtime, ids, cut, settings, started, sink)
    encoded = left_padded(ids, tokenizer.pad_token_id, STATIC_PAD if static else 1, plan.device)
    return _generate(runtime, batch, encoded, [len(row) for row in ids], cut, settings, started, sink, thinking)


def _generate_media(runtime: LoadedRuntime, batch: Sequence[Prompted], settings: dict[str, Any], special: bool,
                    sink: Optional[StreamSink], started: float,
                    thinking: Any = None) -> tuple[list[int], list[Completion]]:
    """A batch with images or audio: the processor encodes each text with its own parts (the plan
    counted their tokens the same way, and never cuts such a prompt)."""
    encoded = encode(runtime.processor, [job.prompt for job in batch], [getattr(job, "media", ()) for job in batch],
                     special, runtime.plan.device, getattr(runtime.model, "dtype", None))
    prompt_tokens = [int(n) for n in encoded["attention_mask"].sum(1).tolist()]
    return _generate(runtime, batch, encoded, prompt_tokens, [False] * len(batch), settings, started, sink, thinking)


def _generate(runtime: LoadedRuntime, batch: Sequence[Prompted], encoded: dict[str, Any], prompt_tokens: list[int],
              cut: list[bool], settings: dict[str, Any], started: float,
              sink: Optional[StreamSink], thinking: Any = None) -> tuple[list[int], list[Completion]]:
    """model.generate over encoded, left-padded prompts; the completions cut and timed."""
    import torch

    tokenizer, model, plan = runtime.tokenizer, runtime.model, runtime.plan
    options = plan.backend_options
    prompt_length = encoded["input_ids"].shape[1]
    stop_ids = _stop_token_ids(model, tokenizer)
    observer = GenerationObserver(prompt_length, started, tokenizer, sink)
    processors: list[Any] = [observer]
    if settings["do_sample"]:
        seeds = [job.seed if job.seed is not None else settings["seed"] for job in batch]
        processors.append(PerRowSampler(seeds, settings["temperature"], settings["top_k"], settings["top_p"],
                                        settings["min_p"], plan.device))
    if thinking is not None:  # after the sampler: a forced token wins over the one drawn
        processors.append(thinking(prompt_length))
    generate_options: dict[str, Any] = {
        "max_new_tokens": settings["max_new_tokens"],
        "do_sample": False,  # greedy over what PerRowSampler left: the drawn token, when sampling
        "temperature": None, "top_p": None, "top_k": None, "min_p": None,
        "repetition_penalty": settings["repetition_penalty"],
        "pad_token_id": tokenizer.pad_token_id,
        "logits_processor": processors,
    }
    if settings["stop"]:
        generate_options.update(stop_strings=list(settings["stop"]), tokenizer=tokenizer)
    generate_options.update(_cache_options(options, plan.device))
    with torch.inference_mode():
        output = model.generate(**encoded, **generate_options)
    total = time.perf_counter() - started
    new_tokens = output[:, prompt_length:].tolist()
    completions = []
    for row, tokens in enumerate(new_tokens):
        completion = _completion(tokenizer, tokens, stop_ids, settings["stop"])
        completion.ttft_s, completion.latency_s = observer.ttft(total), observer.latency(completion.tokens, total)
        completion.truncated = cut[row]
        if sink is not None:
            streamed = observer.streamed(row)
            if completion.text.startswith(streamed) and len(completion.text) > len(streamed):
                sink.on_text(row, completion.text[len(streamed):])  # the last token is never observed
            sink.on_complete(row, completion.text)
        completions.append(completion)
    return prompt_tokens, completions


def left_padded(ids: list[list[int]], pad_id: int, multiple: int, device: str) -> dict[str, Any]:
    """input_ids and attention_mask for prompts already encoded, padded on the left (where a
    decoder-only model's prompts are padded) to the longest, rounded up to `multiple`: what the
    tokenizer's own padding gives, without encoding the text a second time."""
    import torch

    width = -(-max(len(row) for row in ids) // multiple) * multiple
    return {"input_ids": torch.tensor([[pad_id] * (width - len(row)) + row for row in ids], device=device),
            "attention_mask": torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=device)}


def _cache_options(options: dict[str, Any], device: str) -> dict[str, Any]:
    """generate's arguments for the planned KV cache and compile."""
    if options.get("cache_implementation") != "static":
        return {}
    if not options.get("compile"):
        return {"cache_implementation": "static", "disable_compile": True}
    from transformers import CompileConfig

    compile_config = CompileConfig()
    # transformers compiles by itself on CUDA only; runtime.compile=true asked for it wherever the run is
    compile_config._compile_all_devices = not device.startswith("cuda")
    return {"cache_implementation": "static", "compile_config": compile_config}


def _continuous(runtime: LoadedRuntime, prompt_ids: list[list[int]], cut: list[bool], settings: dict[str, Any],
                started: float, sink: Optional[StreamSink]) -> tuple[list[int], list[Completion]]:
    """The batch through transformers' continuous batching (greedy; the plan refused anything else).

    Text is not streamed token by token here: a sink gets each answer whole."""
    from transformers import GenerationConfig

    tokenizer, model = runtime.tokenizer, runtime.model
    stop_ids = _stop_token_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=settings["max_new_tokens"], do_sample=False,
                              eos_token_id=sorted(stop_ids), pad_token_id=tokenizer.pad_token_id)
    outputs = list(model.generate_batch(prompt_ids, generation_config=config, record_timestamps=True).values())
    if len(outputs) != len(prompt_ids) or any(output.error for output in outputs):
        problems = [output.error for output in outputs if output.error] or ["requests went missing"]
        raise RuntimeError(f"continuous batching failed: {problems[0]}")
    total = time.perf_counter() - started
    completions = []
    for output, truncated in zip(outputs, cut):
        completion = _completion(tokenizer, list(output.generated_tokens), stop_ids, [])
        stamps = output.timestamps or []
        completion.ttft_s = stamps[0] - started if stamps else total
        completion.latency_s = stamps[-1] - started if stamps else total
        completion.truncated = truncated
        if sink is not None:
            sink.on_complete(len(completions), completion.text)
        completions.append(completion)
    return [len(ids) for ids in prompt_ids], completions


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _completion(tokenizer: Any, tokens: list[int], stop_ids: set[int], stop_strings: list[str]) -> Completion:
    """Cut a generated row at its end-of-turn token, decode it and cut again at any stop string."""
    ended = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
    kept = tokens if ended is None else tokens[:ended]
    count = len(kept) + (0 if ended is None else 1)
    text = tokenizer.decode(kept, skip_special_tokens=True)
    cut = min((text.find(s) for s in stop_strings if s in text), default=-1)
    if cut >= 0:
        return Completion(text[:cut], count, "stop", ids=kept)
    return Completion(text, count, "length" if ended is None else "stop", ids=kept)
