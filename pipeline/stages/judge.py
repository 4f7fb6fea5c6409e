"""Judge stage: a model grades each answer (scoring=judge), after the score stage, through the backend contract.

The judge is planned like a run's model (`plan_judge`): its reference resolved and its backend planned
by the same stages (pipeline.stages.resolve, pipeline.stages.plan) from the judge's settings put in a
run config's shape (`judge_run_config`), with its prompts (pipeline.scoring.judge_prompts) as the
samples, so it is checked the same way (the model found, the server serving it, the longest judge
prompt within its context, memory) before anything loads; a mistake is a UserError naming
scoring.judge. Before there are answers (a fresh run) each answer stands in as STAND_IN_CHARS
characters per token the model may write; when judging, each real prompt is checked again (one that
does not fit is that answer's error).

`judge` is the stage over a run folder: the answers the journal (judgements.jsonl) lacks are judged,
`samples` times each (seeded per answer and judgement, so neither batching nor a resume changes a
grade), by the answering loop (pipeline.answering.loop) on the judge's backend, loaded here, after the
answering model has been let go. Each answer's verdict (pipeline.scoring.verdicts: a grade, or an
error and no grade) is appended to the journal as soon as its judgements are in; a journal entry
counts only for the same judge (`fingerprint`: model, weights or endpoint, prompt, settings) and the
same prompt (the digest of what the judge was shown), so a resume judges only what is left and a
changed judge judges again. Then the transcript is rewritten once with every answer's `judge`.
An answer that could not be completed is not shown to the judge: it gets grade 0.0 when it had a
reference (a miss, as the string scorer counts it), else none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from pipeline.answering.loop import Answering, Job, answer
from pipeline.backends.base import Backend
from pipeline.backends.registry import reads_runtime
from pipeline.core.console import gib
from pipeline.core.config import Config, DatasetConfig, JudgeConfig, SessionConfig
from pipeline.core.console import ProgressSink
from pipeline.core.errors import UserError
from pipeline.core.folder_names import JUDGEMENTS_FILE, TRANSCRIPT_FILE
from pipeline.core.records import RuntimePlan, Sample, TranscriptRecord
from pipeline.core.transcript import TranscriptWriter, read_transcript, rewrite_transcript
from pipeline.scoring.judge_prompts import judge_messages, prompt_digest, sample_record
from pipeline.scoring.verdicts import Verdict, as_dict, majority, read_verdict
from pipeline.stages.plan import plan
from pipeline.stages.resolve import resolve
from pipeline.stages.score import has_answer, is_answer, key

log = logging.getLogger(__name__)
STAND_IN_CHARS = 4  # characters per answer token of the answering model, for the plan's stand-in answers


@dataclass
class PlannedJudge:
    """A judge, planned: its settings, its plan, and its backend (not loaded)."""

    config: JudgeConfig
    run_config: Config  # the judge as a run's config (judge_run_config)
    plan: RuntimePlan
    backend: Backend

    @property
    def prompt_digest(self) -> str:
        return prompt_digest(self.config)

    def identity(self) -> dict[str, Any]:
        """Who judges: the model as resolved (its weights digest, or its server and served id), the prompt, settings."""
        model = self.plan.model
        return {"name": self.config.name, "model": model.reference, "backend": self.plan.backend,
                "path": model.path, "weights_digest": model.weights_digest, "endpoint": model.endpoint,
                "prompt_digest": self.prompt_digest, "verdict": self.config.verdict, "grades": self.config.grades,
                "scale": [self.config.scale_min, self.config.scale_max], "samples": self.config.samples,
                "generation": self.plan.generation}

    @property
    def fingerprint(self) -> str:
        """A digest of the identity: a journal entry made by another judge is not this judge's."""
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The judge's part of plan.json: who it is, and its plan."""
        return {**self.identity(), "fingerprint": self.fingerprint, "plan": self.plan.to_dict()}


def judge_run_config(config: Config) -> Config:
    """The judge as a run's config: its model and device in runtime (the run's aliases and models folder),
    its server in backend, its generation settings, the chat template or plain text as it says."""
    judge = config.scoring.judge
    runtime, backend, generation = judge.settings()
    runtime = replace(runtime, aliases=dict(config.runtime.aliases), models_dir=config.runtime.models_dir,
                      allow_download=config.runtime.allow_download and reads_runtime(backend, "allow_download"),
                      reuse=config.runtime.reuse)
    return Config(runtime=runtime, generation=generation, session=SessionConfig(chat_template=judge.chat_template),
                  dataset=DatasetConfig(path="judge prompts"), tracking=config.tracking, backend=backend,
                  cache=config.cache)  # the judge shares the response cache with the run


def plan_judge(config: Config, records: list[dict[str, Any]], run_dir: Path,
               answering: Optional[RuntimePlan] = None) -> PlannedJudge:
    """The judge planned for these answer records (or stand-ins: `stand_ins`); a UserError naming
    scoring.judge for anything that cannot work. `answering`: the answering model's plan, when it runs
    in this process too (its memory is reported beside the judge's)."""
    judge = config.scoring.judge
    if config.dataset.kind != "generate":
        raise UserError(f"scoring.judge.model={judge.model}: dataset.kind={config.dataset.kind} scores choices by "
                        "log-likelihood; a judge grades written answers (dataset.kind=generate)")
    run_config = judge_run_config(config)
    where = f"scoring.judge.model={judge.model!r}"
    try:
        samples = [Sample(id=_judge_id(r), messages=tuple(judge_messages(judge, r))) for r in records
                   if is_answer(r) and has_answer(r)]
        if not samples:  # nothing to judge (every answer failed): the model is still checked
            samples = [Sample(id="probe", messages=tuple(judge_messages(judge, sample_record(Sample("probe", ()), ""))))]
        resolved = resolve(run_config.runtime, run_config.backend)
        judge_plan, _, backend = plan(run_config, resolved, run_dir, (), samples)
    except UserError as error:
        message = str(error).replace("runtime.model=", "scoring.judge.model=")
        raise UserError(message if message.startswith("scoring.judge") else f"{where}: {message}") from None
    judge_plan.checks = [c for c in judge_plan.checks if not c.startswith("scorer ")]  # the run's scorer, not the judge
    judge_plan.checks.append(f"judge prompt template renders for every answer (prompt {prompt_digest(judge)})")
    if answering is not None and answering.memory and judge_plan.memory:  # both estimated: both in this process
        both = answering.memory.total_bytes + judge_plan.memory.total_bytes
        judge_plan.checks.append(
            f"memory: the answering model needs about {gib(answering.memory.total_bytes)}, the judge "
            f"{gib(judge_plan.memory.total_bytes)} (both: {gib(both)}); the judge loads once the answering "
            "model has been released, so they are never in memory together")
    return PlannedJudge(judge, run_config, judge_plan, backend)


def stand_ins(samples: list[Sample], config: Config) -> list[dict[str, Any]]:
    """Answer records for samples not answered yet: the longest answer the model may write, as characters."""
    answer = "0" * (STAND_IN_CHARS * config.generation.max_new_tokens)
    return [sample_record(sample, answer) for sample in samples]


def judge(run_dir: Path, planned: PlannedJudge) -> int:
    """The stage (see the module's docstring); returns how many answers were judged now."""
    transcript, journal = run_dir / TRANSCRIPT_FILE, run_dir / JUDGEMENTS_FILE
    records = read_transcript(transcript)
    answers = [r for r in records if is_answer(r)]
    shown = {key(r): _shown(planned, r) for r in answers}
    entries = {key(e): e for e in read_transcript(journal)
               if e.get("fingerprint") == planned.fingerprint and shown.get(key(e)) == e.get("shown")}
    todo = [r for r in answers if key(r) not in entries]
    with TranscriptWriter(journal) as writer:
        unanswered = [_unanswered(planned, r, shown[key(r)]) for r in todo if not has_answer(r)]
        writer.write_batch(unanswered)
        entries.update({key(e): e for e in unanswered})
        to_judge = [r for r in todo if has_answer(r)]
        if to_judge:
            for entry in _judge_answers(planned, to_judge, shown, writer.write_batch):
                entries[key(entry)] = entry
    merged = [{**r, "judge": _shown_in_record(planned, entries[key(r)])} if is_answer(r) else r for r in records]
    if merged != records:
        rewrite_transcript(transcript, merged)
    log.info("judge: %d answer(s) judged by %s (%s); %d kept from before", len(todo), planned.config.name,
             planned.plan.model.reference, len(answers) - len(todo))
    return len(todo)


def _judge_answers(planned: PlannedJudge, records: list[dict[str, Any]], shown: dict, write: Any) -> list[dict]:
    """Judge the answers on the judge's backend (loaded here, closed after); each answer's entry is written
    as soon as its judgements are in."""
    config, backend = planned.config, planned.backend
    by_id = {_judge_id(r): r for r in records}
    votes: dict[str, list[TranscriptRecord]] = {judge_id: [] for judge_id in by_id}
    made: list[dict[str, Any]] = []

    def emit(batch: list[TranscriptRecord]) -> None:
        ready = []
        for step in batch:
            votes[step.sample_id].append(step)
            if len(votes[step.sample_id]) == config.samples:
                record = by_id[step.sample_id]
                ready.append(_entry(planned, record, shown[key(record)], votes[step.sample_id]))
        write(ready)  # fsynced with its batch: a crash or Ctrl-C after it loses none of these
        made.extend(ready)

    jobs = [Job(Sample(id=judge_id, messages=tuple(messages)), index, list(messages))
            for judge_id, record in by_id.items() for messages in [judge_messages(config, record)]
            for index in range(config.samples)]
    progress = ProgressSink(len(jobs), sys.stderr, label="judge")
    backend.load()
    try:
        answer(Answering(backend, planned.run_config, {}, emit, planned.fingerprint, progress, stage="judge"), jobs)
    finally:
        progress.close()
        backend.close()
    return made


def _entry(planned: PlannedJudge, record: dict[str, Any], shown: str, steps: list[TranscriptRecord]) -> dict[str, Any]:
    """The journal entry of one answer: its verdict from its judgements (each failed request an error)."""
    steps = sorted(steps, key=lambda step: step.sample_index)
    verdicts = [Verdict(None, None, "", f"the judge could not answer: {step.error}") if not step.ok
                else read_verdict(step.response, planned.config) for step in steps]
    verdict = majority(verdicts)
    entry = {"sample_id": record["sample_id"], "sample_index": record.get("sample_index", 0),
             "fingerprint": planned.fingerprint, "shown": shown, **as_dict(verdict),
             "reply": steps[0].response, "prompt_tokens": sum(s.prompt_tokens for s in steps),
             "completion_tokens": sum(s.completion_tokens for s in steps),
             "latency_s": round(sum(s.latency_s for s in steps), 6)}
    if len(steps) > 1:
        entry["votes"] = [{**as_dict(v), "reply": s.response} for v, s in zip(verdicts, steps)]
    if verdict.error:
        log.warning("judge: answer %s/%s: %s", record["sample_id"], record.get("sample_index", 0), verdict.error)
    return entry


def _unanswered(planned: PlannedJudge, record: dict[str, Any], shown: str) -> dict[str, Any]:
    """The entry of an answer that could not be completed: not shown to the judge; a miss when it had a reference."""
    return {"sample_id": record["sample_id"], "sample_index": record.get("sample_index", 0),
            "fingerprint": planned.fingerprint, "shown": shown,
            "grade": None if record.get("reference") is None else 0.0, "said": None,
            "reason": "no answer to judge: " + (record.get("error") or "its thinking never closed"), "error": None,
            "reply": "", "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0}


def _shown_in_record(planned: PlannedJudge, entry: dict[str, Any]) -> dict[str, Any]:
    """What the transcript record keeps of its judgement."""
    kept = {k: v for k, v in entry.items() if k not in ("sample_id", "sample_index", "fingerprint", "shown")}
    return {"name": planned.config.name, "model": planned.plan.model.reference, **kept}


def _shown(planned: PlannedJudge, record: dict[str, Any]) -> str:
    """A digest of what the judge is shown for this answer (an answer without one: of its record)."""
    seen = ([m.content for m in judge_messages(planned.config, record)] if has_answer(record)
            else [record.get("status"), record.get("error"), record.get("reference")])
    return hashlib.sha256(json.dumps(seen, default=str).encode()).hexdigest()[:16]


def _judge_id(record: dict[str, Any]) -> str:
    """The judge's own id for an answer: its record id and sample index."""
    return f"{record['sample_id']}@{record.get('sample_index', 0)}"
