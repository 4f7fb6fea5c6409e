"""Multiple choice by log-likelihood through `python -m pipeline`: the shipped demo set, its metrics, and a
run resumed in the middle (kept records untouched, the rest scored as in an uninterrupted run)."""

from __future__ import annotations

import json

import pytest

from pipeline.core.config import ASSETS_DIR
from tests.conftest import only_run_dir, run_pipeline

DATASET = {r["id"]: r for r in map(json.loads, (ASSETS_DIR / "datasets" / "addition_choice.jsonl").read_text().splitlines())}
ARGS = ["dataset=addition_choice", "tracking=none", "dataset.limit=10", "runtime.batch_size=4"]


def _records(folder):
    return [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]


def test_multiple_choice_run_and_resume_in_the_middle(tmp_path):
    result = run_pipeline(ARGS, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = only_run_dir(tmp_path)
    records = _records(folder)
    assert len(records) == 10
    for record in records:
        ll = record["loglikelihood"]
        assert len(ll["loglikelihoods"]) == 4 and all(value < 0 for value in ll["loglikelihoods"])
        best = max(range(4), key=lambda i: ll["loglikelihoods"][i])
        assert ll["prediction"] == best and record["score"] == float(best == ll["answer"])
        choices = DATASET[record["sample_id"]]["choices"]
        assert record["response"] == choices[best] and record["reference"] == choices[ll["answer"]]
        assert ll["chars"] == [len(c) for c in choices] and len(ll["is_greedy"]) == 4
        assert record["messages"][-1]["content"] == DATASET[record["sample_id"]]["question"]
    summary = json.loads((folder / "summary.json").read_text())
    accuracy = sum(r["score"] for r in records) / 10
    assert summary["likelihood"]["acc"] == accuracy == summary["accuracy"]
    assert summary["likelihood"]["acc_ci_low"] <= accuracy <= summary["likelihood"]["acc_ci_high"] + 1e-9
    assert accuracy >= 0.8  # the demo model adds; its likeliest choice is the sum

    # as a kill leaves it: the first batch written, the run interrupted
    transcript = folder / "transcript.jsonl"
    kept = "".join(transcript.read_text().splitlines(keepends=True)[:4])
    transcript.write_text(kept)
    (folder / "summary.json").unlink()
    (folder / "status.json").write_text(json.dumps({"state": "interrupted", "reason": "stopped by SIGTERM"}))
    again = run_pipeline([f"resume={folder}"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 answer(s) kept from before" in again.stderr
    assert transcript.read_text().startswith(kept)
    after = _records(folder)
    resumed = {r["sample_id"]: r["loglikelihood"]["loglikelihoods"] for r in after}
    assert len(after) == len(resumed) == 10  # the 4 kept were not scored again
    for record in records:
        assert resumed[record["sample_id"]] == pytest.approx(record["loglikelihood"]["loglikelihoods"], abs=1e-5)
    assert json.loads((folder / "summary.json").read_text())["likelihood"]["acc"] == accuracy


def test_perplexity_through_a_server_is_refused_in_one_line(tmp_path):
    result = run_pipeline(["dataset=addition_text", "tracking=none", "backend=openai",
                           "backend.base_url=http://127.0.0.1:9/v1"], tmp_path)
    assert result.returncode == 2
    assert "dataset.kind=perplexity scores by log-likelihood, which backend=openai does not give yet" in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/*/transcript.jsonl"))
