"""Execute stage: every sample's answer (or, for dataset.kind multiple_choice and perplexity, its
log-likelihoods: pipeline.answering.likelihood), batch by batch, into the transcript.

Each sample becomes a conversation (session history, system prompt, its messages), answered
`generation.num_samples` times when several completions per prompt are asked for (pass@k), by
pipeline.answering.loop (tool round trips included) through the run's backend (pipeline.backends:
batches of similar prompt length, per-sample seeds, per-sample timing); this stage knows only the
backend contract, not which model or server answers. A batch's records are written and fsynced
as soon as the batch completes (on a worker thread, while the next batch generates); the order of
the transcript is the same on every run. Scripted conversations run a turn at a time across all
of them, each turn answered after the history so far; with session.autosave each conversation is
saved after every turn. A resumed run passes the answers it already has (`done`, by record id and
sample index): those are skipped, and a conversation goes on from its recorded turns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from pipeline.answering.likelihood import pending, score_choices, score_documents
from pipeline.answering.loop import Answering, Job, answer, tools_by_name
from pipeline.answering.tools import load_tools
from pipeline.backends.base import Backend
from pipeline.core.config import Config
from pipeline.core.files import write_json
from pipeline.core.records import Message, Sample
from pipeline.core.streaming import StreamSink
from pipeline.core.transcript import TranscriptWriter
from pipeline.data.prompts import as_dict, conversation, from_dict
from pipeline.core.background_writer import BackgroundEmitter

log = logging.getLogger(__name__)
Done = dict[tuple[str, int], dict[str, Any]]  # a resumed run's final answer records by (record id, sample index)


def execute(backend: Backend, samples: list[Sample], config: Config, writer: TranscriptWriter,
            config_hash: str, sink: Optional[StreamSink] = None, done: Optional[Done] = None,
            first_batch: int = 0) -> int:
    """Answer all single-prompt samples, then the scripted conversations; returns records written.

    `backend` is loaded (its `load` was called); closing it is the caller's."""
    done = done or {}
    with BackgroundEmitter(writer.write_batch) as emit:  # a batch is written while the next one generates
        if config.dataset.kind != "generate":  # scored by log-likelihood: nothing is generated
            score = score_choices if config.dataset.kind == "multiple_choice" else score_documents
            batches = score(backend, pending(samples, done), config, emit, config_hash, first_batch, sink)
        else:
            batches = _generate(backend, samples, config, emit, config_hash, sink, done, first_batch, writer)
    # what a resume kept and what it generated: the one way to see, from outside, that kept work was not redone
    log.info("execute: %d records written in %d batches; %d answer(s) kept from before", writer.written,
             batches - first_batch, len(done))
    return writer.written


def _generate(backend: Backend, samples: list[Sample], config: Config, emit: Any, config_hash: str,
              sink: Optional[StreamSink], done: Done, first_batch: int, writer: TranscriptWriter) -> int:
    """Generated answers: single prompts, then scripted conversations; returns the next batch number."""
    k = config.generation.num_samples
    context = Answering(backend, config, tools_by_name(load_tools(config.session.tools)), emit, config_hash, sink,
                        batch=first_batch)
    answer(context, [Job(s, i, conversation(s, config.session)) for s in samples if not s.turns for i in range(k)
                     if (s.id, i) not in done])
    _converse(context, [s for s in samples if s.turns], writer.path.parent / "conversations", done)
    return context.batch


def _converse(context: Answering, talks: list[Sample], autosave_dir: Path, done: Done) -> None:
    """Scripted conversations, a turn at a time across all of them, each turn after its own history.

    A turn already in `done` is not generated again: its recorded messages and answer become the history."""
    config = context.config
    k = config.generation.num_samples
    histories = {(s.id, i): conversation(s, config.session) for s in talks for i in range(k)}
    ended: set[tuple[str, int]] = set()  # conversations stopped by a turn that could not be answered
    for turn in range(max((len(s.turns) for s in talks), default=0)):
        jobs = [Job(sample, i, histories[(sample.id, i)] + [Message("user", sample.turns[turn].content)], turn)
                for sample in talks if turn < len(sample.turns) for i in range(k) if (sample.id, i) not in ended]
        recorded = [(job, done[(job.record_id, job.sample_index)]) for job in jobs
                    if (job.record_id, job.sample_index) in done]
        to_answer = [job for job in jobs if (job.record_id, job.sample_index) not in done]
        finished = [(job, record["status"], [from_dict(m) for m in record["messages"]], record["response"])
                    for job, record in recorded]
        finished += [(job, final.status, job.messages, final.response) for job, final in zip(to_answer,
                                                                                              answer(context, to_answer))]
        for job, status, messages, response in finished:
            key = (job.sample.id, job.sample_index)
            if status == "error":
                ended.add(key)
            else:
                histories[key] = messages + [Message("assistant", response)]
        if config.session.autosave:
            save_conversations(autosave_dir, histories)


def save_conversations(folder: Path, histories: dict[tuple[str, int], list[Message]]) -> None:
    """Each conversation so far as a JSON file of messages, loadable again with session.history."""
    for (sample_id, index), messages in histories.items():
        name = sample_id if index == 0 else f"{sample_id}.{index}"
        write_json(folder / f"{name}.json", [as_dict(m) for m in messages])
