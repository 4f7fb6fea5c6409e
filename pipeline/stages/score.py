"""Score stage: each answer in the transcript gets its score, and the answer the scorer was given.

Execute writes answers only (score null); this stage generates nothing. `score_records` is the
pure part: records and the scorer config in, the same records out with `score` and `extracted`
filled in on every answer (tool steps pass through). An answer that could not be completed
(status error), or whose thinking never closed (reasoning_truncated: the thinking is never taken
for the answer), scores 0.0 when it has a reference (a miss), else None; the scorer sees no text.

`score` is the stage over a run folder. Scores are made durable as they are made: each goes to
the journal scores.jsonl (keyed by sample id and sample index; appended a line at a time, so a
crash of the process loses none of them, and fsynced every SYNC_EVERY_S), and when every answer
has its score the transcript is rewritten once, atomically, with them. A resumed run scores only
the answers the journal lacks, and a run folder whose journal exists finished executing: its
resume starts here and loads no model (pipeline.run.resume). Re-scoring another run's answers
with another scorer (pipeline.from_transcript) is this stage in a new run folder (pipeline.run.rescore).

Which text a scorer sees is `scored_text`: the whole response, or what dataset.scorer.extract takes from it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

from pipeline.core.config import ScorerConfig
from pipeline.core.folder_names import SCORES_FILE, TRANSCRIPT_FILE
from pipeline.core.transcript import TranscriptWriter, read_transcript, rewrite_transcript
from pipeline.scoring.extract import extract_answer
from pipeline.scoring.scorers import Scorer, build_scorer

log = logging.getLogger(__name__)
SYNC_EVERY_S = 1.0  # the journal is fsynced at least this often (and at the end): a machine crash loses no more
Key = tuple[str, int]  # (record id, sample index): one answer


def score_records(records: list[dict[str, Any]], config: ScorerConfig) -> list[dict[str, Any]]:
    """The records with every answer scored by the scorer `config` describes; other records as they were."""
    scorer = build_scorer(config)
    return [score_record(record, scorer, config.extract) if is_answer(record) else record for record in records]


def score_record(record: dict[str, Any], scorer: Scorer, extract: Optional[str] = None) -> dict[str, Any]:
    """One answer record with its `score` and `extracted` (the text the scorer was given) filled in.

    A record scored by log-likelihood (dataset.kind=multiple_choice: the likeliest choice against the
    right one) keeps the score execute gave it; its text is not what was scored."""
    reference = record.get("reference")
    if record.get("loglikelihood"):
        return {**record, "extracted": None}
    if not has_answer(record):  # a miss when there was something to get right
        return {**record, "score": None if reference is None else 0.0, "extracted": None}
    extracted = scored_text(record, extract)
    if extracted is None:  # dataset.scorer.extract found nothing: no answer (lm-eval's "[invalid]")
        return {**record, "score": None if reference is None and not scorer.user else 0.0, "extracted": None}
    return {**record, "score": scorer(extracted, reference), "extracted": extracted}


def scored_text(record: dict[str, Any], extract: Optional[str] = None) -> Optional[str]:
    """What the scorer is given of an answer: its response, or what dataset.scorer.extract takes from it
    (pipeline.scoring.extract; None where it finds nothing)."""
    response = record.get("response") or ""
    return response if extract is None else extract_answer(response, extract)


def has_answer(record: dict[str, Any]) -> bool:
    """Completed, and not thinking that ran out before it closed (its response is no answer)."""
    return record.get("status", "ok") == "ok" and not record.get("reasoning_truncated")


def is_answer(record: dict[str, Any]) -> bool:
    return record.get("kind", "answer") == "answer"


def key(record: dict[str, Any]) -> Key:
    return record["sample_id"], record.get("sample_index", 0)


def score(run_dir: Path, config: ScorerConfig) -> int:
    """The stage: score the transcript's answers the journal lacks, then put every score into the
    transcript; returns how many answers were scored now (0 when a resume found them all scored)."""
    transcript, journal = run_dir / TRANSCRIPT_FILE, run_dir / SCORES_FILE
    records = read_transcript(transcript)
    journaled = {key(entry): entry for entry in read_transcript(journal)}  # a torn last line is scored again
    # an entry counts for the answer it was made for (the text the scorer saw), never for another one
    scores = {key(r): journaled[key(r)] for r in records if is_answer(r) and key(r) in journaled
              and journaled[key(r)].get("extracted") == _seen(r, config.extract)}
    missing = [record for record in records if is_answer(record) and key(record) not in scores]
    scorer = build_scorer(config) if missing else None
    with TranscriptWriter(journal) as writer:  # created even with nothing to score: execute had finished
        synced = time.perf_counter()
        for record in missing:
            scored = score_record(record, scorer, config.extract)
            entry = {"sample_id": scored["sample_id"], "sample_index": scored.get("sample_index", 0),
                     "score": scored["score"], "extracted": scored["extracted"]}
            writer.write_batch([entry], sync=False)  # in the kernel at once: a crash of this process keeps it
            scores[key(record)] = entry
            if time.perf_counter() - synced >= SYNC_EVERY_S:
                writer.sync()
                synced = time.perf_counter()
        writer.sync()
    merged = [_with_score(record, scores.get(key(record))) if is_answer(record) else record for record in records]
    if merged != records:
        rewrite_transcript(transcript, merged)
    log.info("score: %d answer(s) scored with %s; %d kept from before", len(missing),
             scorer.label if scorer else config.label, len(scores) - len(missing))
    return len(missing)


def _seen(record: dict[str, Any], extract: Optional[str] = None) -> Optional[str]:
    """What `score_record` records as `extracted` for this answer."""
    if record.get("loglikelihood"):
        return None
    return scored_text(record, extract) if has_answer(record) else None


def _with_score(record: dict[str, Any], entry: Optional[dict[str, Any]]) -> dict[str, Any]:
    assert entry is not None, "every answer was scored above"
    return {**record, "score": entry["score"], "extracted": entry["extracted"]}
