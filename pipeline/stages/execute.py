"""Execute stage: generate a response for every sample, batch by batch, into the transcript.

Prompts go through the chat template (with the session's system prompt), are left-padded into
batches of the planned size and generated with `model.generate` under the plan's effective
generation settings: greedy when the temperature is 0, otherwise sampled from a seed derived from
`generation.seed` and the batch index. Prompts the plan marked for truncation lose their start.
Each batch's records are written (and fsynced) as soon as the batch completes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pipeline.config import Config
from pipeline.prompts import adds_special_tokens, conversation, render
from pipeline.records import LoadedRuntime, Sample, TranscriptRecord
from pipeline.scoring import exact_match
from pipeline.transcript import TranscriptWriter

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0  # a progress line at most this often, and one at the end


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str


def execute(runtime: LoadedRuntime, samples: list[Sample], config: Config, writer: TranscriptWriter,
            config_hash: str) -> int:
    """Generate for all samples; returns the number of transcript records written."""
    batch_size = runtime.plan.batch_size
    truncated = set(runtime.plan.truncated_samples)
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    done, last_report = 0, time.perf_counter()
    for index, batch in enumerate(batches):
        started = time.perf_counter()
        messages = [conversation(sample, config.session) for sample in batch]
        prompts = [render(runtime.chat_template, m, config.session) for m in messages]
        prompt_tokens, completions = generate_batch(runtime, prompts, config, seed_offset=index)
        latency = time.perf_counter() - started
        writer.write_batch(
            TranscriptRecord(
                sample_id=sample.id,
                messages=[{"role": m.role, "content": m.content} for m in sample_messages],
                response=completion.text,
                reference=sample.reference,
                score=exact_match(completion.text, sample.reference),
                prompt_tokens=tokens,
                completion_tokens=completion.tokens,
                finish_reason=completion.finish_reason,
                latency_s=round(latency, 6),
                batch=index,
                config_hash=config_hash,
                truncated=sample.id in truncated,
            )
            for sample, sample_messages, tokens, completion in zip(batch, messages, prompt_tokens, completions)
        )
        done += len(batch)
        if time.perf_counter() - last_report >= PROGRESS_EVERY_S or index == len(batches) - 1:
            log.info("execute: %d/%d samples, batch %d/%d", done, len(samples), index + 1, len(batches))
            last_report = time.perf_counter()
    return writer.written


def generate_batch(runtime: LoadedRuntime, prompts: list[str], config: Config,
                   seed_offset: int) -> tuple[list[int], list[Completion]]:
    """Generate for one batch of prompt texts: (prompt token counts, completions)."""
    import torch

    tokenizer, model, plan = runtime.tokenizer, runtime.model, runtime.plan
    settings = plan.generation
    limit = {"truncation": True, "max_length": plan.context_length - plan.max_new_tokens} if plan.truncated_samples else {}
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=adds_special_tokens(config.session),
                        **limit).to(plan.device)
    prompt_tokens = encoded["attention_mask"].sum(dim=1).tolist()
    options: dict[str, Any] = {
        "max_new_tokens": settings["max_new_tokens"],
        "do_sample": settings["do_sample"],
        "repetition_penalty": settings["repetition_penalty"],
        "pad_token_id": tokenizer.pad_token_id,
    }
    if settings["do_sample"]:
        options.update(temperature=settings["temperature"], top_p=settings["top_p"], top_k=settings["top_k"],
                       min_p=settings["min_p"])
        torch.manual_seed(batch_seed(settings["seed"], seed_offset))
    else:
        options.update(temperature=None, top_p=None, top_k=None, min_p=None)
    if settings["stop"]:
        options.update(stop_strings=list(settings["stop"]), tokenizer=tokenizer)
    with torch.inference_mode():
        output = model.generate(**encoded, **options)
    new_tokens = output[:, encoded["input_ids"].shape[1]:].tolist()
    stop_ids = _stop_token_ids(model, tokenizer)
    return prompt_tokens, [_completion(tokenizer, row, stop_ids, settings["stop"]) for row in new_tokens]


def batch_seed(seed: int, batch_index: int) -> int:
    """A distinct, reproducible seed for each batch of a run."""
    return (seed * 1_000_003 + batch_index) % (2**63)


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
        return Completion(text[:cut], count, "stop")
    return Completion(text, count, "length" if ended is None else "stop")
