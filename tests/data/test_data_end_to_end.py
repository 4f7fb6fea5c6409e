"""Datasets through `python -m pipeline`: a CSV mapped by a template and scored after extraction, and a
mapping mistake refused in one line with exit 2 before anything is created."""

from __future__ import annotations

import json

from tests.conftest import only_run_dir, run_pipeline

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


def test_hub_dataset_from_the_cache_with_fewshot_from_its_train_split(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers.hf_cache import add_snapshot

    def parquet(rows):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        return buffer.getvalue()

    sums = [{"a": a, "b": b, "total": str(a + b)} for a, b in ((86, 87), (45, 15), (78, 99), (12, 30))]
    add_snapshot(tmp_path / "hub", "someone/sums", "c" * 40, {
        "data/train-00000-of-00001.parquet": parquet(sums[3:]), "data/test-00000-of-00001.parquet": parquet(sums[:3])},
        refs=("main",), kind="datasets")
    result = run_pipeline(["dataset.path=someone/sums", "dataset.split=test", "dataset.fields.reference=total",
                           "dataset.template.prompt='What is {{a}}+{{b}}?'", "dataset.fewshot.k=1",
                           "dataset.fewshot.split=train", "dataset.fewshot.style=turns", "dataset.limit=3",
                           "generation.max_new_tokens=4"], tmp_path,  # tracked in MLflow: the dataset logged by commit
                          env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "ds")})
    assert result.returncode == 0, result.stderr[-2000:]
    folder = only_run_dir(tmp_path)
    records = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    assert [[m["content"] for m in r["messages"]] for r in records] == [
        ["What is 12+30?", "42", f"What is {s['a']}+{s['b']}?"] for s in sums[:3]]
    inputs = json.loads((folder / "inputs.json").read_text())
    assert inputs["dataset.path"]["sha256"] == "commit:" + "c" * 40
    from tests.conftest import mlflow_client

    client = mlflow_client(tmp_path)
    (tracked,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    (logged,) = tracked.inputs.dataset_inputs
    assert logged.dataset.digest == "c" * 32 and logged.dataset.source_type == "hugging_face"
