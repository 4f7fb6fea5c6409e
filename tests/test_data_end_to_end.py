"""Datasets through `python -m pipeline`: a CSV mapped by a template and scored after extraction, and a
mapping mistake refused in one line with exit 2 before anything is created."""

from __future__ import annotations

import json

from conftest import only_run_dir, run_pipeline

COMMON = ["tracking=none", "dataset.limit=3", "generation.max_new_tokens=4"]


def test_csv_with_template_and_extraction(tmp_path):
    (tmp_path / "sums.csv").write_text("a,b,total\n86,87,173\n45,15,60\n78,99,177\n")
    result = run_pipeline([f"dataset.path={tmp_path / 'sums.csv'}", "dataset.template.prompt='What is {{a}}+{{b}}?'",
                           "dataset.fields.reference=total", "dataset.scorer.extract=last_number", *COMMON], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (only_run_dir(tmp_path) / "transcript.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in records] == ["What is 86+87?", "What is 45+15?", "What is 78+99?"]
    for record in records:
        digits = "".join(ch for ch in record["response"] if ch.isdigit())
        assert record["extracted"] == (digits or None)  # the demo model answers with the number alone
        assert record["score"] == float(record["extracted"] == record["reference"])
    assert sum(r["score"] for r in records) >= 2  # the demo model adds two-digit numbers


def test_mapping_mistake_is_one_line_and_creates_nothing(tmp_path):
    (tmp_path / "d.csv").write_text("q,a\nWhat is 1+1?,2\n")
    result = run_pipeline([f"dataset.path={tmp_path / 'd.csv'}", "dataset.fields.prompt=question", *COMMON], tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'd.csv'}:2 (id '2'): no field 'question' (dataset.fields.prompt); the record has q, a" \
        in result.stderr
    assert "Traceback" not in result.stderr and len([l for l in result.stderr.splitlines() if "error" in l]) == 1
    assert not (tmp_path / "runs").exists()
