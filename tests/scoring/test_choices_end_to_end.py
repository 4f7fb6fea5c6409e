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
    assert "dataset.kind=perplexity scores whole texts by log-likelihood, which backend=openai does not give; use " \
           "a backend that does (backend=transformers" in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/*/transcript.jsonl"))


# choices of very different lengths, some with characters of several UTF-8 bytes: the raw, per-character and
# per-byte log-likelihoods pick different choices (the demo model's numbers; checked below, not assumed)
DISAGREEING = [
    {"id": "a", "question": "What is 12+7?", "choices": ["19", "19191919191919", "١٩", "nineteen"], "answer": "A"},
    {"id": "b", "question": "What is 30+41?", "choices": ["71", "7", "71 71 71 71 71", "٧١ ٧١"], "answer": "A"},
    {"id": "c", "question": "What is 5+5?", "choices": ["10", "1", "10000000000", "éé"], "answer": "A"},
    {"id": "f", "question": "What is 60+13?", "choices": ["73", "3", "737373", "73€€"], "answer": "A"},
]


def test_acc_acc_norm_and_acc_bytes_each_pick_as_an_independent_computation_does(tmp_path):
    dataset = tmp_path / "mc.jsonl"
    dataset.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in DISAGREEING), encoding="utf-8")
    result = run_pipeline(["dataset=addition_choice", f"dataset.path={dataset}", "tracking=none"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = only_run_dir(tmp_path)
    rows = {row["id"]: row for row in DISAGREEING}
    picks = {"acc": [], "acc_norm": [], "acc_bytes": []}
    for record in _records(folder):
        ll, choices = record["loglikelihood"], rows[record["sample_id"]]["choices"]
        lls = ll["loglikelihoods"]

        def likeliest(divisors):
            values = [value / divisor for value, divisor in zip(lls, divisors)]
            return values.index(max(values))

        expected = {"acc": likeliest([1] * 4), "acc_norm": likeliest([len(c) for c in choices]),
                    "acc_bytes": likeliest([len(c.encode("utf-8")) for c in choices])}
        assert (ll["prediction"], ll["prediction_norm"], ll["prediction_bytes"]) == tuple(expected.values())
        assert record["response"] == choices[expected["acc"]] and record["score"] == float(expected["acc"] == 0)
        for name, pick in expected.items():
            picks[name].append(pick)
    assert len(picks["acc"]) == len(DISAGREEING)
    assert picks["acc"] != picks["acc_norm"] != picks["acc_bytes"] != picks["acc"]  # the case tells them apart
    metrics = json.loads((folder / "summary.json").read_text())["likelihood"]
    for name, chosen in picks.items():
        assert metrics[name] == pytest.approx(sum(pick == 0 for pick in chosen) / len(chosen)), name
    assert len({metrics["acc"], metrics["acc_norm"], metrics["acc_bytes"]}) == 3
    assert f"acc {metrics['acc']:.3f} [" in result.stdout and f"acc_norm {metrics['acc_norm']:.3f} [" in result.stdout
