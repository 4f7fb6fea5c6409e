"""Execute through `python -m pipeline`: scripted conversations with autosave and reload, and sampling
that gives each sample the same output whatever the batch size."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_pipeline, write_jsonl

pytestmark = pytest.mark.slow


def transcript(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]


def test_a_scripted_conversation_is_saved_and_can_be_continued(tmp_path):
    dataset = write_jsonl(tmp_path / "talk.jsonl", [
        {"id": "sums", "turns": [{"content": "What is 12+30?", "reference": "42"},
                                 {"content": "What is 25+25?", "reference": "50"}]}])
    result = run_pipeline([f"dataset.path={dataset}", "session.autosave=true", "tracking=none",
                           "hydra.run.dir=runs/talk"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = transcript(tmp_path / "runs" / "talk")
    assert [(r["sample_id"], r["conversation_id"], r["turn"]) for r in records] == [("sums#0", "sums", 0),
                                                                                   ("sums#1", "sums", 1)]
    assert records[1]["messages"][1] == {"role": "assistant", "content": records[0]["response"]}
    assert all(r["ttft_s"] > 0 for r in records)
    saved = tmp_path / "runs" / "talk" / "conversations" / "sums.json"
    assert len(json.loads(saved.read_text())) == 4

    follow_up = write_jsonl(tmp_path / "next.jsonl", [{"id": "next", "prompt": "What is 11+11?", "reference": "22"}])
    again = run_pipeline([f"dataset.path={follow_up}", f"session.history={saved}", "tracking=none",
                          "hydra.run.dir=runs/next"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (record,) = transcript(tmp_path / "runs" / "next")
    assert record["messages"][:4] == json.loads(saved.read_text())


def test_sampled_outputs_are_the_same_whatever_the_batch_size(tmp_path):
    common = ["generation=sampling", "generation.temperature=1.5", "generation.seed=5", "dataset.limit=24",
              "tracking=none"]
    outputs = {}
    for batch in (1, 7, 24):
        result = run_pipeline(common + [f"runtime.batch_size={batch}", f"hydra.run.dir=runs/b{batch}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs[batch] = {r["sample_id"]: r["response"] for r in transcript(tmp_path / "runs" / f"b{batch}")}
    assert outputs[1] == outputs[7] == outputs[24]
    assert len(outputs[1]) == 24


def test_a_bad_turn_names_the_line(tmp_path):
    dataset = write_jsonl(tmp_path / "bad.jsonl", [{"id": "t", "turns": ["ok", 3]}])
    result = run_pipeline([f"dataset.path={dataset}", "tracking=none"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        f'error: {dataset}:1: turns[1] must be a non-empty string or {{"content": a string, "reference": optional}}'
