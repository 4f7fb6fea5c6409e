"""Durability, in process: the transcript writer against torn lines, corruption and a full disk,
fsyncs batch by batch, the run folder lock, and resume of tool steps, scripted conversations and num_samples > 1 cut at
every kind of point (what the kill test cannot reach cheaply)."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace

import pytest

import pipeline.core.transcript as transcript_module
from pipeline.backends.transformers.load import load
from tests.helpers.planning import plan_in_process
from pipeline.core.config import ASSETS_DIR, GenerationConfig, SessionConfig, ToolBudgetConfig
from pipeline.core.errors import StorageError, UserError
from pipeline.core.records import TranscriptRecord
from pipeline.core.transcript import (
    TranscriptCorrupt,
    TranscriptWriter,
    read_transcript,
)
from pipeline.run.resume import begin, config_difference, settle
from pipeline.run.status import locked, set_status
from pipeline.stages.execute import execute
from pipeline.stages.resolve import resolve
from tests.conftest import in_process, make_config, write_jsonl

TOOL_MODEL = ASSETS_DIR / "tool_model"


def record(sample_id: str, **fields) -> TranscriptRecord:
    values = dict(sample_id=sample_id, sample_index=0, messages=[], response="42", reference="42", score=1.0,
                  prompt_tokens=3, completion_tokens=2, finish_reason="stop", ttft_s=0.0, latency_s=0.0, batch=0,
                  config_hash="h")
    values.update(fields)
    return TranscriptRecord(**values)


def test_a_torn_last_line_is_cut_off_before_appending(tmp_path):
    path = tmp_path / "transcript.jsonl"
    with TranscriptWriter(path) as writer:
        writer.write_batch([record("a"), record("b")])
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"sample_id": "c", "respo')  # a crash in the middle of a write
    assert [r["sample_id"] for r in read_transcript(path)] == ["a", "b"]
    with TranscriptWriter(path) as writer:
        writer.write_batch([record("c")])
    assert [r["sample_id"] for r in read_transcript(path)] == ["a", "b", "c"]
    assert path.read_bytes().startswith(whole) and path.read_bytes().count(b"\n") == 3


def test_a_bad_line_before_the_last_is_corruption_named_by_line(tmp_path):
    path = tmp_path / "transcript.jsonl"
    with TranscriptWriter(path) as writer:
        writer.write_batch([record("a"), record("b"), record("c")])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "garbage\n" + lines[2])
    with pytest.raises(TranscriptCorrupt, match=r"transcript.jsonl:2: not a transcript record"):
        read_transcript(path)
    with pytest.raises(TranscriptCorrupt):
        TranscriptWriter(path)
    assert path.read_text() == lines[0] + "garbage\n" + lines[2]  # reported, never repaired away


def test_a_full_disk_keeps_the_whole_records_and_says_what_to_do(tmp_path, monkeypatch):
    """The disk fills up (OSError ENOSPC injected at the writer's one write call, after half a record
    reached the file): the records before stay whole, the half record is taken back."""
    path = tmp_path / "transcript.jsonl"
    real_write = transcript_module._write
    calls = []

    def filling(fd, data):
        calls.append(len(data))
        if len(calls) == 3:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(transcript_module, "_write", filling)
    with TranscriptWriter(path) as writer:
        writer.write_batch([record("a"), record("b")])
        with pytest.raises(StorageError, match=r"the disk is full while writing .*transcript.jsonl.*resume="):
            writer.write_batch([record("c"), record("d")])
    assert [r["sample_id"] for r in read_transcript(path)] == ["a", "b"]
    assert path.read_text().endswith("\n")


def test_a_run_folder_is_held_by_one_process_at_a_time(tmp_path):
    set_status(tmp_path, "started")
    with locked(tmp_path):
        with pytest.raises(UserError, match=r"in use by another run \(pid \d+"):
            with locked(tmp_path):
                pass
    with locked(tmp_path):  # released when the holder is done
        pass


def test_a_resume_with_other_settings_names_what_differs(tmp_path, small_dataset, tiny_model):
    config = make_config(tiny_model, small_dataset)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    changed = replace(config, generation=GenerationConfig(temperature=0.7), resume=str(tmp_path))
    message = config_difference(tmp_path, changed)
    assert "generation.temperature: 0.0 in the run, 0.7 now" in message
    assert config_difference(tmp_path, replace(config, resume=str(tmp_path))) is None
    with pytest.raises(UserError, match="already holds a run"):
        set_status(tmp_path, "failed")
        begin(tmp_path, config)  # not resuming: the folder is not reused


def content(records: list[dict]) -> dict[tuple, tuple]:
    """What a run wrote, without its timings and batch numbers."""
    keyed = {}
    for r in records:
        key = (r["sample_id"], r["sample_index"], r["kind"], r["step"])
        assert key not in keyed, f"duplicate record {key}"
        tool = {k: v for k, v in (r["tool"] or {}).items() if k != "seconds"}
        keyed[key] = (r["response"], r["score"], r["status"], json.dumps(r["messages"]), tool)
    return keyed


def test_resume_cut_anywhere_gives_the_uninterrupted_records_for_tools_conversations_and_num_samples(tmp_path):
    """Tool steps (an answer is complete only with its answer record), a scripted conversation
    (`<id>#<turn>`, the later turn built on the recorded one) and two samples per prompt, sampled:
    the transcript is cut after every record in turn (every other cut with a torn line after it)
    and resumed. The result must be the uninterrupted records, and the work done before the cut
    must be kept: the complete answers (with their tool steps) keep their bytes, timings included,
    and only the rest is generated (execute's count of records written)."""
    dataset = write_jsonl(tmp_path / "mixed.jsonl", [
        {"id": "talk", "turns": [{"content": "What is 1234+5678?", "reference": "6912"},
                                 {"content": "What is 9000+1001?", "reference": "10001"}]},
    ])
    config = make_config(TOOL_MODEL, dataset, # a loaded machine must not spend the turn: a record cut short by time would differ between runs
                         session=SessionConfig(tools=[{"_target_": "pipeline.answering.demo_tools.add"}],
                                               tool_budget=ToolBudgetConfig(seconds_per_turn=600)),
                         generation=GenerationConfig(max_new_tokens=64, temperature=0.2, num_samples=2, seed=5))
    plan, samples, template = plan_in_process(config)
    runtime = load(plan, template)

    def run_into(folder, done=None, first_batch=0):
        with TranscriptWriter(folder / "transcript.jsonl") as writer:
            written = execute(in_process(runtime, config), samples, config, writer, config.config_hash(), None, done,
                              first_batch)
        return read_transcript(folder / "transcript.jsonl"), written

    (tmp_path / "whole").mkdir()
    whole, _ = run_into(tmp_path / "whole")
    assert any(r["kind"] == "tool_call" for r in whole) and any(r["turn"] == 1 for r in whole)
    assert {r["sample_index"] for r in whole} == {0, 1}
    lines = (tmp_path / "whole" / "transcript.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) >= 8
    for cut in range(1, len(lines)):
        tear = cut % 2 == 1
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        torn = lines[cut][: len(lines[cut]) // 2] if tear else ""
        (folder / "transcript.jsonl").write_text("".join(lines[:cut]) + torn)
        answered = {(r["sample_id"], r["sample_index"]) for r in whole[:cut] if r["kind"] == "answer"}
        complete = [line for line, r in zip(lines[:cut], whole) if (r["sample_id"], r["sample_index"]) in answered]
        previous = begin(folder, replace(config, resume=str(folder)))
        settle(folder, previous)
        resumed, generated = run_into(folder, previous.done, previous.next_batch)
        where = f"cut after {cut} records, torn={tear}"
        assert content(resumed) == content(whole), where
        after = (folder / "transcript.jsonl").read_text().splitlines(keepends=True)
        assert after[:len(complete)] == complete, f"{where}: a complete answer lost its bytes (generated again?)"
        assert generated == len(whole) - len(complete), f"{where}: {generated} records generated, " \
            f"{len(whole) - len(complete)} were missing"


def test_a_lost_insert_race_is_tried_again_and_a_true_duplicate_still_fails(tmp_path, monkeypatch):
    """Parallel jobs logging the same dataset at once: one insert loses (UNIQUE constraint); its retry
    finds the row. A duplicate that stays one is not retried for long and stops the run."""
    import pipeline.tracking.guard as guard
    from pipeline.core.config import TrackingConfig
    from pipeline.core.errors import TrackingError

    monkeypatch.setattr(guard.time, "sleep", lambda seconds: None)
    tracker = guard.GuardedTracker(TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db"), tmp_path)
    race = RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name")
    attempts = []

    def lost_once():
        attempts.append(1)
        if len(attempts) == 1:
            raise race
        return "logged"

    assert tracker._guard(lost_once) == "logged" and len(attempts) == 2

    def always():
        attempts.append(1)
        raise race

    attempts.clear()
    with pytest.raises(TrackingError, match="UNIQUE constraint failed"):
        tracker._guard(always)
    assert len(attempts) == guard.RACE_RETRIES + 1


def test_each_batch_is_fsynced_whole_before_the_next_is_written(tmp_path, monkeypatch, capsys):
    """The README's "fsynced batch by batch", through the entry point: the transcript is fsynced once per batch,
    each time holding exactly the batches written so far (what survives a power loss)."""
    from tests.backends.test_media_models import run_here

    real_fsync, synced = os.fsync, []

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("transcript.jsonl"):
            synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(transcript_module.os, "fsync", fsync)
    monkeypatch.chdir(tmp_path)
    code, err = run_here(["dataset.limit=5", "runtime.batch_size=2", "pipeline.until=execute", "tracking=none",
                          "hydra.run.dir=run"], monkeypatch, capsys)
    assert code == 0, err
    lines = (tmp_path / "run" / "transcript.jsonl").read_bytes().splitlines(keepends=True)
    ends, size = [], 0
    for line, following in zip(lines, lines[1:] + [None]):
        size += len(line)
        if following is None or json.loads(following)["batch"] != json.loads(line)["batch"]:
            ends.append(size)
    assert len(ends) == 3 and synced == ends
