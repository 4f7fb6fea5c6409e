"""Perplexity through `python -m pipeline` on the shipped text: documents longer than the demo model's
context are scored in rolling windows, and the summary's perplexities follow from the records."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import only_run_dir, run_pipeline


def test_perplexity_of_the_shipped_text(tmp_path):
    result = run_pipeline(["dataset=addition_text", "tracking=none"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = only_run_dir(tmp_path)
    records = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    documents = [r["loglikelihood"] for r in records]
    assert len(documents) == 5 and all(d["loglikelihood"] < 0 for d in documents)
    context = json.loads((folder / "plan.json").read_text())["context_length"]
    longest = max(documents, key=lambda d: d["tokens"])
    assert longest["tokens"] > context and longest["windows"] == math.ceil(longest["tokens"] / context)
    texts = [r["messages"][-1]["content"] for r in records]
    assert [d["bytes"] for d in documents] == [len(t.encode()) for t in texts]
    assert [d["words"] for d in documents] == [len(t.split()) for t in texts]
    total, size = sum(d["loglikelihood"] for d in documents), sum(d["bytes"] for d in documents)
    likelihood = json.loads((folder / "summary.json").read_text())["likelihood"]
    assert likelihood["bits_per_byte"] == pytest.approx(-total / size / math.log(2))
    assert likelihood["byte_perplexity"] == pytest.approx(2 ** likelihood["bits_per_byte"])
    assert likelihood["word_perplexity"] == pytest.approx(math.exp(-total / sum(d["words"] for d in documents)))
