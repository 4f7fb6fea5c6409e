"""Execute stage: generate every sample's response, batch by batch, into the transcript.

Each sample is rendered (chat template, system prompt, template arguments, prefill) into the
exact prompt text, `generation.num_samples` times when several completions per prompt are asked
for (pass@k). Prompts are sorted by length (longest first, ties in dataset order) and cut into
batches of the planned size, so little compute goes to padding and the order of the transcript
is the same on every run. Each batch is generated with `model.generate` under the plan's
effective settings: greedy at temperature 0, otherwise sampled per sample from its own seed
(pipeline.sampling), so a sample's output does not depend on its batch. Each record carries its
time to first token and its own latency; a batch's records are written and fsynced as soon as
the batch completes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.prompts import adds_special_tokens, as_dict, conversation, render
from pipeline.records import LoadedRuntime, Message, Sample, TranscriptRecord
from pipeline.sampling import GenerationObserver, PerRowSampler, StreamSink, sample_seed
from pipeline.scoring import exact_match
from pipeline.transcript import TranscriptWriter

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0  # a progress line at most this often, and one at the end


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str
    ttft_s: float = 0.0
    latency_s: float = 0.0
    truncated: bool = False  # its prompt was cut from the left to fit the context


@dataclass
class Job:
    """One completion to generate: a sample (or one turn of it), which of its num_samples, its prompt."""

    sample: Sample
    sample_index: int
    messages: list[Message]
    prompt: str
    turn: Optional[int] = None  # the turn of a scripted conversation

    @property
    def record_id(self) -> str:
        return self.sample.id if self.turn is None else f"{self.sample.id}#{self.turn}"

    @property
    def reference(self) -> Optional[str]:
        return self.sample.reference if self.turn is None else self.sample.turns[self.turn].reference


def execute(runtime: LoadedRuntime, samples: list[Sample], config: Config, writer: TranscriptWriter,
            config_hash: str, sink: Optional[StreamSink] = None) -> int:
    """Generate for all single-prompt samples, then the scripted conversations; returns records written."""
    k = config.generation.num_samples
    single = [Job(s, i, m, render(runtime.chat_template, m, config.session))
              for s in samples if not s.turns for m in [conversation(s, config.session)] for i in range(k)]
    batch = _generate_and_write(runtime, single, config, writer, config_hash, sink, first_batch=0)[1]
    _converse(runtime, [s for s in samples if s.turns], config, writer, config_hash, sink, batch)
    return writer.written


def _converse(runtime: LoadedRuntime, talks: list[Sample], config: Config, writer: TranscriptWriter,
              config_hash: str, sink: Optional[StreamSink], batch: int) -> None:
    """Scripted conversations, a turn at a time across all of them, each turn after its own history."""
    k = config.generation.num_samples
    histories = {(s.id, i): conversation(s, config.session) for s in talks for i in range(k)}
    ended: set[tuple[str, int]] = set()  # conversations stopped by a turn that did not fit
    for turn in range(max((len(s.turns) for s in talks), default=0)):
        jobs = []
        for sample in (s for s in talks if turn < len(s.turns)):
            for i in range(k):
                if (sample.id, i) in ended:
                    continue
                messages = histories[(sample.id, i)] + [Message("user", sample.turns[turn].content)]
                jobs.append(Job(sample, i, messages, render(runtime.chat_template, messages, config.session), turn))
        for job in _over_context(runtime, jobs, config):
            message = (f"turn {job.turn} of conversation {job.sample.id!r} does not fit the model's context of "
                       f"{runtime.plan.context_length} tokens with generation.max_new_tokens="
                       f"{runtime.plan.max_new_tokens}; the conversation ends here")
            if config.execute.fail_fast:
                raise UserError(message + " (execute.fail_fast=true)")
            log.warning(message)
            writer.write_batch([_error_record(job, message, batch, config_hash)])
            ended.add((job.sample.id, job.sample_index))
            jobs.remove(job)
        records, batch = _generate_and_write(runtime, jobs, config, writer, config_hash, sink, first_batch=batch)
        for job, record in zip(jobs, records):
            histories[(job.sample.id, job.sample_index)] = job.messages + [Message("assistant", record.response)]
        if config.session.autosave:
            save_conversations(writer.path.parent / "conversations", histories)


def _over_context(runtime: LoadedRuntime, jobs: list[Job], config: Config) -> list[Job]:
    """The jobs whose prompt leaves no room for max_new_tokens (none when prompts may be cut from the left)."""
    plan = runtime.plan
    if not jobs or not plan.context_length or config.session.truncation == "left":
        return []
    budget = plan.context_length - plan.max_new_tokens
    lengths = runtime.tokenizer([job.prompt for job in jobs], add_special_tokens=adds_special_tokens(config.session))
    return [job for job, ids in zip(jobs, lengths["input_ids"]) if len(ids) > budget]


def _error_record(job: Job, message: str, batch: int, config_hash: str) -> TranscriptRecord:
    """A sample that could not be completed: no response, wrong if it had a reference."""
    return TranscriptRecord(
        sample_id=job.record_id, sample_index=job.sample_index,
        messages=[as_dict(m) for m in job.messages], response="",
        reference=job.reference, score=None if job.reference is None else 0.0, prompt_tokens=0,
        completion_tokens=0, finish_reason="error", ttft_s=0.0, latency_s=0.0, batch=batch, config_hash=config_hash,
        conversation_id=None if job.turn is None else job.sample.id, turn=job.turn, status="error", error=message)


def save_conversations(folder: Path, histories: dict[tuple[str, int], list[Message]]) -> None:
    """Each conversation so far as a JSON file of messages, loadable again with session.history."""
    for (sample_id, index), messages in histories.items():
        name = sample_id if index == 0 else f"{sample_id}.{index}"
        write_json(folder / f"{name}.json", [as_dict(m) for m in messages])


def _generate_and_write(runtime: LoadedRuntime, jobs: list[Job], config: Config, writer: TranscriptWriter,
                        config_hash: str, sink: Optional[StreamSink], first_batch: int) -> tuple[list[TranscriptRecord], int]:
    """Generate the jobs in length-sorted batches, writing each batch; (records in job order, next batch number)."""
    batches = length_buckets(runtime, jobs, runtime.plan.batch_size, config)
    by_job: dict[int, TranscriptRecord] = {}
    last_report = time.perf_counter()
    for offset, batch in enumerate(batches):
        prompt_tokens, completions = generate_batch(runtime, batch, config, sink)
        records = [
            TranscriptRecord(
                sample_id=job.record_id,
                sample_index=job.sample_index,
                messages=[as_dict(m) for m in job.messages],
                response=config.session.prefill + completion.text,
                reference=job.reference,
                score=exact_match(config.session.prefill + completion.text, job.reference),
                prompt_tokens=tokens,
                completion_tokens=completion.tokens,
                finish_reason=completion.finish_reason,
                ttft_s=round(completion.ttft_s, 6),
                latency_s=round(completion.latency_s, 6),
                batch=first_batch + offset,
                config_hash=config_hash,
                truncated=completion.truncated,
                conversation_id=None if job.turn is None else job.sample.id,
                turn=job.turn,
            )
            for job, tokens, completion in zip(batch, prompt_tokens, completions)
        ]
        writer.write_batch(records)
        by_job.update((id(job), record) for job, record in zip(batch, records))
        if time.perf_counter() - last_report >= PROGRESS_EVERY_S or offset == len(batches) - 1:
            log.info("execute: %d completions written, batch %d", writer.written, first_batch + offset + 1)
            last_report = time.perf_counter()
    return [by_job[id(job)] for job in jobs], first_batch + len(batches)


def length_buckets(runtime: LoadedRuntime, jobs: list[Job], batch_size: int, config: Config) -> list[list[Job]]:
    """Batches of similar prompt length: longest first, ties kept in dataset order."""
    if not jobs:
        return []
    lengths = [len(ids) for ids in runtime.tokenizer([job.prompt for job in jobs],
                                                     add_special_tokens=adds_special_tokens(config.session))["input_ids"]]
    order = sorted(range(len(jobs)), key=lambda i: -lengths[i])
    return [[jobs[i] for i in order[start:start + batch_size]] for start in range(0, len(order), batch_size)]


def generate_batch(runtime: LoadedRuntime, batch: list[Job], config: Config,
                   sink: Optional[StreamSink] = None) -> tuple[list[int], list[Completion]]:
    """Generate for one batch of jobs: (prompt token counts, completions)."""
    import torch

    tokenizer, model, plan = runtime.tokenizer, runtime.model, runtime.plan
    settings = plan.generation
    started = time.perf_counter()
    prompts, special = [job.prompt for job in batch], adds_special_tokens(config.session)
    cut = [False] * len(batch)
    limit: dict[str, Any] = {}
    if plan.truncated_samples:
        budget = plan.context_length - plan.max_new_tokens
        cut = [len(ids) > budget for ids in tokenizer(prompts, add_special_tokens=special)["input_ids"]]
        limit = {"truncation": True, "max_length": budget}
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=special, **limit).to(plan.device)
    prompt_tokens = encoded["attention_mask"].sum(dim=1).tolist()
    prompt_length = encoded["input_ids"].shape[1]
    stop_ids = _stop_token_ids(model, tokenizer)
    observer = GenerationObserver(prompt_length, started, tokenizer, sink)
    processors: list[Any] = [observer]
    if settings["do_sample"]:
        seeds = [sample_seed(settings["seed"], job.sample.id, job.sample_index) for job in batch]
        processors.append(PerRowSampler(seeds, settings["temperature"], settings["top_k"], settings["top_p"],
                                        settings["min_p"], plan.device))
    options: dict[str, Any] = {
        "max_new_tokens": settings["max_new_tokens"],
        "do_sample": False,  # greedy over what PerRowSampler left: the drawn token, when sampling
        "temperature": None, "top_p": None, "top_k": None, "min_p": None,
        "repetition_penalty": settings["repetition_penalty"],
        "pad_token_id": tokenizer.pad_token_id,
        "logits_processor": processors,
    }
    if settings["stop"]:
        options.update(stop_strings=list(settings["stop"]), tokenizer=tokenizer)
    with torch.inference_mode():
        output = model.generate(**encoded, **options)
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
