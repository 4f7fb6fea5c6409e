"""Transcript records read back typed: what an older version did not write is filled in one place."""

from pipeline.core.records import TranscriptRecord
from pipeline.stages.summarize import summarize

# a record as the first transcript schema wrote it: no kind, status, step, reasoning or answer token counts
OLD = {"sample_id": "a", "messages": [], "response": "4", "reference": "4", "score": 1.0, "prompt_tokens": 7,
       "completion_tokens": 2, "finish_reason": "stop", "ttft_s": 0.1, "latency_s": 0.2, "batch": 0,
       "config_hash": "h", "future_field": "kept out"}


def test_an_old_record_reads_as_a_completed_answer_with_its_completion_as_its_answer_tokens():
    record = TranscriptRecord.from_dict(OLD)
    assert record.is_answer and record.ok and record.sample_index == 0 and record.schema_version == 0
    assert record.answer_tokens == 2 and record.reasoning_tokens == 0 and not record.reasoning_truncated
    assert TranscriptRecord.from_dict({**OLD, "answer_tokens": 1}).answer_tokens == 1


def test_summarize_reads_old_and_new_records_alike():
    new = TranscriptRecord.from_dict({**OLD, "sample_id": "b", "score": 0.0}).to_dict()
    summary = summarize([OLD, new], {"execute": 1.0})
    assert (summary.num_samples, summary.accuracy, summary.num_errors) == (2, 0.5, 0)
    assert summary.answer_tokens_mean == 2.0 and summary.prompt_tokens == 14
