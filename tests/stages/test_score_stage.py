"""The score stage: answers scored after execute, durably, without generating.

Unit tests of pipeline.stages.score (records in, scored records out; the stage over a run folder,
its journal, a crash in the middle), then end to end through `python -m pipeline`: a run stopped
after execute leaves unscored answers and a later resume scores them with the model folder gone;
a crash inside a user scorer resumes scoring only what was not scored; re-scoring into a new
folder leaves the source byte for byte and makes a complete run of its own.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core.config import STAGES, ConfigError, PipelineConfig, ScorerConfig
from pipeline.core.transcript import read_transcript
from pipeline.stages.score import score, score_records
from tests.conftest import (
    DEMO_MODEL,
    mlflow_client,
    run_pipeline,
    snapshot,
    write_jsonl,
)

ANSWERS = [
    {"sample_id": "a", "sample_index": 0, "kind": "answer", "status": "ok", "response": " 42 ", "reference": "42",
     "score": None},
    {"sample_id": "b", "sample_index": 0, "kind": "tool_call", "status": "ok", "response": "calling", "reference": "7",
     "score": None},
    {"sample_id": "b", "sample_index": 0, "kind": "answer", "status": "ok", "response": "8", "reference": "7",
     "score": None},
    {"sample_id": "c", "sample_index": 0, "kind": "answer", "status": "error", "response": "", "reference": "1",
     "score": None},
    {"sample_id": "d", "sample_index": 0, "kind": "answer", "status": "error", "response": "", "reference": None,
     "score": None},
    {"sample_id": "e", "sample_index": 1, "kind": "answer", "status": "ok", "response": "x", "reference": None,
     "score": None},
]


def test_score_records_scores_answers_only_and_records_what_the_scorer_saw():
    before = json.loads(json.dumps(ANSWERS))
    scored = score_records(ANSWERS, ScorerConfig())
    assert ANSWERS == before  # the records given are not changed
    assert [r["score"] for r in scored] == [1.0, None, 0.0, 0.0, None, None]
    assert [r.get("extracted") for r in scored] == [" 42 ", None, "8", None, None, "x"]
    assert scored[1] is ANSWERS[1]  # a tool step passes through
    assert [r["score"] for r in score_records(ANSWERS, ScorerConfig(name="numeric"))][:3] == [1.0, None, 0.0]


@pytest.fixture
def judge(tmp_path, monkeypatch):
    """A user scorer module `judge_mod`: counts its calls in CALLS, raises on a response named in FAIL."""
    (tmp_path / "judge_mod.py").write_text(textwrap.dedent("""
        CALLS = []
        FAIL = set()

        def judge(response, reference):
            CALLS.append(response)
            if response in FAIL:
                raise RuntimeError("judge fell over")
            return 0.5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("judge_mod", None)
    import judge_mod

    yield judge_mod
    sys.modules.pop("judge_mod", None)


def test_the_stage_keeps_what_its_journal_holds_and_resumes_after_a_crash(tmp_path, judge):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = [{**ANSWERS[0], "sample_id": f"s{i}", "response": f"r{i}"} for i in range(5)]
    write_jsonl(run_dir / "transcript.jsonl", records)
    config = ScorerConfig(_target_="judge_mod.judge")

    judge.FAIL.add("r3")
    with pytest.raises(RuntimeError, match="judge fell over"):
        score(run_dir, config)
    journal = read_transcript(run_dir / "scores.jsonl")
    assert [e["sample_id"] for e in journal] == ["s0", "s1", "s2"]  # each score kept as it was made
    assert all(r["score"] is None for r in read_transcript(run_dir / "transcript.jsonl"))  # not half rewritten

    # a torn last line (a crash mid-write) is scored again; what the journal holds is not
    with (run_dir / "scores.jsonl").open("a") as file:
        file.write('{"sample_id": "s3", "sample_index": 0, "sco')
    judge.FAIL.clear()
    judge.CALLS.clear()
    assert score(run_dir, config) == 2
    assert judge.CALLS == ["r3", "r4"]
    scored = read_transcript(run_dir / "transcript.jsonl")
    assert [(r["score"], r["extracted"]) for r in scored] == [(0.5, f"r{i}") for i in range(5)]

    # a journal entry wins over scoring again: the stage trusts what it made before
    entries = read_transcript(run_dir / "scores.jsonl")
    entries[0]["score"] = 0.25
    write_jsonl(run_dir / "scores.jsonl", entries)
    judge.CALLS.clear()
    assert score(run_dir, config) == 0 and judge.CALLS == []
    assert read_transcript(run_dir / "transcript.jsonl")[0]["score"] == 0.25
    # ... but only for the answer it was made for: an entry that saw another text is not this answer's score
    entries[1]["extracted"] = "something else"
    write_jsonl(run_dir / "scores.jsonl", entries)
    assert score(run_dir, config) == 1 and judge.CALLS == ["r1"]


def test_from_transcript_starts_at_the_score_stage_so_until_must_be_score_or_later():
    with pytest.raises(ConfigError) as raised:
        PipelineConfig(until="execute", from_transcript="runs/x")
    assert raised.value.key == "pipeline.until" and "score or summarize" in str(raised.value)
    assert PipelineConfig(until="score", from_transcript="runs/x").until == "score"


# --- end to end --------------------------------------------------------------------------------

ARGS = ["runtime.model=./model", "dataset.limit=6", "tracking.traces=false"]


@pytest.fixture(scope="module")
def stopped_after_execute(tmp_path_factory) -> tuple[Path, Path]:
    """(launch folder, run folder) of a demo run on a copy of the model, stopped by pipeline.until=execute."""
    cwd = tmp_path_factory.mktemp("until_execute")
    shutil.copytree(DEMO_MODEL, cwd / "model")
    result = run_pipeline([*ARGS, "pipeline.until=execute", "hydra.run.dir=run"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "stopped after execute" in result.stdout and "pipeline.until=summarize" in result.stdout
    return cwd, cwd / "run"


def test_until_execute_leaves_unscored_answers(stopped_after_execute):
    _, run_dir = stopped_after_execute
    records = read_transcript(run_dir / "transcript.jsonl")
    assert len(records) == 6 and all(r["score"] is None and r["extracted"] is None for r in records)
    assert not (run_dir / "scores.jsonl").exists() and not (run_dir / "summary.json").exists()
    assert set(json.loads((run_dir / "stages.json").read_text())) == {"resolve", "plan", "load", "execute"}


@pytest.fixture(scope="module")
def resumed(stopped_after_execute):
    """The run resumed up to summarize, with its model folder gone: only the score stage can run."""
    cwd, run_dir = stopped_after_execute
    same = run_pipeline([f"resume={run_dir}"], cwd=cwd)  # the saved pipeline.until=execute: nothing to do
    assert same.returncode == 0 and "nothing to resume" in same.stdout and "pipeline.until=summarize" in same.stdout
    shutil.rmtree(cwd / "model")
    result = run_pipeline([f"resume={run_dir}", "pipeline.until=summarize"], cwd=cwd)
    return cwd, run_dir, result


def test_a_resume_scores_the_answers_without_a_model(resumed):
    cwd, run_dir, result = resumed
    assert result.returncode == 0, result.stderr
    assert "load:" not in result.stderr and "execute:" not in result.stderr
    records = read_transcript(run_dir / "transcript.jsonl")
    assert all(r["score"] == float(r["response"].strip() == r["reference"].strip()) for r in records)
    assert all(r["extracted"] == r["response"] for r in records)
    journal = read_transcript(run_dir / "scores.jsonl")
    assert [(e["sample_id"], e["score"]) for e in journal] == [(r["sample_id"], r["score"]) for r in records]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_scored"] == 6 and summary["accuracy"] == pytest.approx(sum(r["score"] for r in records) / 6)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "success"
    # the generation's seconds are the earlier process's (stages.json), so its speed is still known
    assert set(summary["stage_seconds"]) == set(STAGES) and summary["tokens_per_second"] > 0
    stages = next(line for line in result.stdout.splitlines() if line.startswith("stages"))
    assert stages.startswith("stages    resolve ") and ", score " in stages  # the console lists it like the others

    client = mlflow_client(cwd)
    (found,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])  # the same MLflow run
    assert found.info.status == "FINISHED" and "stage/score/seconds" in found.data.metrics
    assert "stage/execute/seconds" in found.data.metrics and found.data.metrics["accuracy"] == summary["accuracy"]


def test_rescoring_makes_a_new_complete_run_and_leaves_the_source_byte_for_byte(resumed):
    cwd, source, _ = resumed
    before = snapshot(source)
    result = run_pipeline([f"pipeline.from_transcript={source}", "dataset.scorer.name=numeric",
                           "hydra.run.dir=rescored"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert snapshot(source) == before
    target = cwd / "rescored"
    assert json.loads((target / "status.json").read_text())["state"] == "success"
    records = read_transcript(target / "transcript.jsonl")
    assert [r["response"] for r in records] == [r["response"] for r in read_transcript(source / "transcript.jsonl")]
    assert len(read_transcript(target / "scores.jsonl")) == len(records)
    summary = json.loads((target / "summary.json").read_text())
    assert summary["scorer"] == "numeric" and set(summary["stage_seconds"]) >= {"score", "summarize"}
    client = mlflow_client(cwd)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    (rescore_run,) = [r for r in runs if r.data.tags.get("run_dir") == str(target.resolve())]
    assert rescore_run.info.status == "FINISHED" and rescore_run.data.tags["run_type"] == "rescore"
    assert "stage/score/seconds" in rescore_run.data.metrics and len(runs) == 2


JUDGE = """
import os, pathlib

def judge(response, reference):
    calls = pathlib.Path("calls.log")
    with calls.open("a") as log:
        log.write(response + "\\n")
    if pathlib.Path("crash").exists() and len(calls.read_text().splitlines()) == 4:
        os._exit(9)  # the process dies in the middle of the score stage, no clean-up at all
    return float(response.strip() == (reference or "").strip())
"""


def test_a_crash_while_scoring_resumes_scoring_only_what_is_left(tmp_path):
    (tmp_path / "judge_e2e.py").write_text(JUDGE)
    (tmp_path / "crash").write_text("")
    args = ["dataset.limit=6", "tracking=none", "dataset.scorer._target_=judge_e2e.judge", "hydra.run.dir=run"]
    crashed = run_pipeline(args, cwd=tmp_path)
    assert crashed.returncode == 9, crashed.stderr
    run_dir = tmp_path / "run"
    assert len(read_transcript(run_dir / "scores.jsonl")) == 3  # the three scored before the crash
    assert all(r["score"] is None for r in read_transcript(run_dir / "transcript.jsonl"))

    (tmp_path / "crash").unlink()
    result = run_pipeline([f"resume={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "load:" not in result.stderr and "execute:" not in result.stderr  # nothing generated again
    calls = (tmp_path / "calls.log").read_text().splitlines()
    records = read_transcript(run_dir / "transcript.jsonl")
    assert len(calls) == 4 + 3 and calls[4:] == [r["response"] for r in records[3:]]
    assert all(r["score"] == float(r["response"].strip() == r["reference"].strip()) for r in records)
    assert json.loads((run_dir / "summary.json").read_text())["num_scored"] == 6
