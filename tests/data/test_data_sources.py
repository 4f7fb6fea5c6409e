"""Dataset sources (JSON, CSV, Parquet, a Hub dataset in a cache laid out here), the field mapping,
Jinja templates and few-shot examples: what each yields, and each mistake refused in one line."""

from __future__ import annotations

import io
import json

import pytest

from pipeline.core.config import (
    DatasetConfig,
    FewshotConfig,
    FieldsConfig,
    TemplateConfig,
)
from pipeline.core.errors import UserError
from pipeline.data.dataset import load_samples
from tests.conftest import write_jsonl
from tests.helpers.hf_cache import add_snapshot

ROWS = [{"q": "What is 1+2?", "a": "3", "key": "x1"}, {"q": "What is 2+2?", "a": "4", "key": "x2"},
        {"q": "What is 3+4?", "a": "7", "key": "x3"}]
MAPPED = dict(fields=FieldsConfig(prompt="q", reference="a", id="key"))


def _parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _expected(samples):
    return [(s.id, s.messages[0].content, s.reference) for s in samples]


WANT = [("x1", "What is 1+2?", "3"), ("x2", "What is 2+2?", "4"), ("x3", "What is 3+4?", "7")]


def test_json_csv_parquet_and_jsonl_give_the_same_samples(tmp_path):
    json_file = tmp_path / "d.json"
    json_file.write_text(json.dumps(ROWS))
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("q,a,key\n" + "".join(f'"{r["q"]}",{r["a"]},{r["key"]}\n' for r in ROWS))
    parquet_file = tmp_path / "d.parquet"
    parquet_file.write_bytes(_parquet_bytes(ROWS))
    jsonl_file = write_jsonl(tmp_path / "d.jsonl", ROWS)
    for path in (json_file, csv_file, parquet_file, jsonl_file):
        assert _expected(load_samples(DatasetConfig(path=str(path), **MAPPED))) == WANT, path


def test_json_file_of_splits(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": ROWS[:1], "test": ROWS[1:]}))
    assert [s.id for s in load_samples(DatasetConfig(path=str(path), split="test", **MAPPED))] == ["x2", "x3"]
    with pytest.raises(UserError, match=r"dataset.split=null: .*holds the splits train, test; choose one"):
        load_samples(DatasetConfig(path=str(path), **MAPPED))


def test_csv_mistake_names_file_and_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("q,a,key\nWhat?,1,k1\nonly,two\n")
    with pytest.raises(UserError, match=r"d.csv:3: 2 fields, but the header has 3"):
        load_samples(DatasetConfig(path=str(path), **MAPPED))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding datasets--org--quiz (two subsets, train and test splits) and nothing else."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    readme = ("---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train-*\n"
              "  - split: test\n    path: main/test-*\n- config_name: other\n  data_files:\n  - split: test\n"
              "    path: other/test-*\n---\n")
    add_snapshot(cache, "org/quiz", "a" * 40, {
        "README.md": readme.encode(),
        "main/train-00000-of-00001.parquet": _parquet_bytes(ROWS[:2]),
        "main/test-00000-of-00001.parquet": _parquet_bytes(ROWS[2:]),
        "other/test-00000-of-00001.parquet": _parquet_bytes(ROWS[:1]),
    }, refs=("main",), kind="datasets")
    return cache


def test_hub_dataset_from_the_local_cache(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    samples = load_samples(DatasetConfig(path="org/quiz", subset="main", split="test", **MAPPED))
    assert _expected(samples) == WANT[2:]
    samples = load_samples(DatasetConfig(path="org/quiz", subset="other", **MAPPED))  # its only split
    assert _expected(samples) == WANT[:1]


@pytest.mark.parametrize("settings,message", [
    (dict(path="org/quiz"), "org/quiz has the subsets main, other; choose one with dataset.subset=NAME"),
    (dict(path="org/quiz", subset="nope"), "dataset.subset='nope': org/quiz has the subsets main, other"),
    (dict(path="org/quiz", subset="main"), "dataset.split=null: org/quiz/main has the splits train, test"),
    (dict(path="org/quiz", subset="main", split="validation"), "dataset.split='validation'"),
    (dict(path="org/absent"), "Hub dataset org/absent is not in the local Hugging Face cache"),
])
def test_hub_mistakes_are_one_line(hub_cache, tmp_path, monkeypatch, settings, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as raised:
        load_samples(DatasetConfig(**settings, **MAPPED))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_templates_render_prompt_and_reference(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q1", "answer": "work...\n#### 42"}])
    (sample,) = load_samples(DatasetConfig(path=str(path), template=TemplateConfig(
        prompt="Question: {{ question }}\nAnswer:", reference="{{ answer.split('####')[-1] | trim }}")))
    assert sample.messages[0].content == "Question: Q1\nAnswer:" and sample.reference == "42"


@pytest.mark.parametrize("record,settings,message", [
    ({"q": "x"}, dict(fields=FieldsConfig(prompt="question")),
     "d.jsonl:1 (id '1'): no field 'question' (dataset.fields.prompt); the record has q"),
    ({"q": "x"}, dict(fields=FieldsConfig(prompt="q", reference="a")),
     "d.jsonl:1 (id '1'): no field 'a' (dataset.fields.reference)"),
    ({"q": "x"}, dict(template=TemplateConfig(prompt="{{ question }}")),
     "d.jsonl:1 (id '1'): dataset.template.prompt: 'question' is undefined; the record has q"),
    ({"q": "x", "e": ""}, dict(template=TemplateConfig(prompt="{{ e }}  ")),
     "d.jsonl:1 (id '1'): dataset.template.prompt renders to nothing"),
    ({"q": "x"}, dict(template=TemplateConfig(prompt="{{ q ")), "dataset.template.prompt='{{ q ': not a valid Jinja"),
])
def test_mapping_mistakes_name_the_record(tmp_path, record, settings, message):
    path = write_jsonl(tmp_path / "d.jsonl", [record])
    with pytest.raises(UserError) as raised:
        load_samples(DatasetConfig(path=str(path), **settings))
    assert message in str(raised.value)


def test_fewshot_examples_depend_on_the_sample_only(tmp_path):
    rows = [{"key": f"k{i}", "q": f"Q{i}", "a": str(i)} for i in range(12)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    fewshot = FewshotConfig(k=6, seed=7)
    full = {s.id: s for s in load_samples(DatasetConfig(path=str(path), fewshot=fewshot, **MAPPED))}
    limited = load_samples(DatasetConfig(path=str(path), fewshot=fewshot, limit=4, **MAPPED))
    assert all(full[s.id] == s for s in limited)  # dataset.limit (and so the batch) does not change them
    prompt = full["k5"].messages[0].content
    assert prompt.endswith("\n\nQ5") and prompt.count("\n\n") == 6
    assert not any(f"Q{i} {i}" in full[f"k{i}"].messages[0].content for i in range(12))  # never itself
    other_seed = load_samples(DatasetConfig(path=str(path), fewshot=FewshotConfig(k=6, seed=8), **MAPPED))
    assert [s.messages for s in other_seed] != [full[s.id].messages for s in other_seed]


def test_fewshot_from_another_split_as_chat_turns(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"train": [{"key": "t1", "q": "T?", "a": "1"}], "test": ROWS}))
    samples = load_samples(DatasetConfig(path=str(path), split="test", **MAPPED,
                                         fewshot=FewshotConfig(k=1, split="train", style="turns")))
    assert [(m.role, m.content) for m in samples[0].messages] == [
        ("user", "T?"), ("assistant", "1"), ("user", "What is 1+2?")]
    with pytest.raises(UserError, match="dataset.fewshot.k=2: the examples' source has only 1 record"):
        load_samples(DatasetConfig(path=str(path), split="test", **MAPPED, fewshot=FewshotConfig(k=2, split="train")))


def test_multiple_choice_records(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"question": "2+2=", "choices": {"text": ["3", "4"], "label": ["A", "B"]}, "answerKey": "B"},
        {"question": "1+1=", "choices": {"text": ["2", "5"], "label": ["1", "2"]}, "answerKey": "1"},
        {"question": "3+3=", "opts": ["6", "7"], "answerKey": 0},
    ])
    config = DatasetConfig(path=str(path), kind="multiple_choice", limit=2,
                           fields=FieldsConfig(prompt="question", answer="answerKey"))
    first, second = load_samples(config)
    assert first.choices == ("3", "4") and first.answer == 1 and first.reference == "4"
    assert second.answer == 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "x", "choices": ["a", "b"], "answer": "C"}])
    with pytest.raises(UserError, match=r"bad.jsonl:1 \(id '1'\): field 'answer' \(dataset.fields.answer\) = 'C' names "
                                        "none of the 2 choices"):
        load_samples(DatasetConfig(path=str(bad), kind="multiple_choice", fields=FieldsConfig(prompt="question")))


def test_fewshot_prompts_are_the_same_whatever_the_batch_size(tmp_path, tiny_model):
    from dataclasses import replace

    from pipeline.core.config import GenerationConfig, TrackingConfig
    from pipeline.run.runner import run
    from tests.conftest import make_config

    rows = [{"key": f"k{i}", "q": f"Q{i}?", "a": str(i)} for i in range(7)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    prompts = []
    for batch_size in (1, 3):
        config = make_config(tiny_model, path, tracking=TrackingConfig(enabled=False),
                             generation=GenerationConfig(max_new_tokens=2))
        config.dataset = DatasetConfig(path=str(path), fewshot=FewshotConfig(k=2, style="turns"), **MAPPED)
        config.runtime = replace(config.runtime, batch_size=batch_size)
        run_dir = tmp_path / f"run-{batch_size}"
        run(config, run_dir)
        records = [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]
        prompts.append({r["sample_id"]: r["messages"] for r in records})
    assert prompts[0] == prompts[1] and len(prompts[0]) == 7
    assert all(len(messages) == 5 for messages in prompts[0].values())  # two examples as turns, then the question


def test_a_damaged_file_in_a_hub_snapshot_is_one_line_naming_the_dataset(tmp_path, monkeypatch):
    """The snapshot's Parquet footer reads (so the dataset opens), a data page in the middle does not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    rows = [{"q": f"What is {i}+{i * 7 % 13}? {i * 7919 % 104729:x}", "a": str(i), "key": f"k{i}"} for i in range(3000)]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, compression="snappy", row_group_size=500)
    data = bytearray(buffer.getvalue())
    data[len(data) // 2:len(data) // 2 + 256] = b"\x07" * 256
    add_snapshot(cache, "org/broken", "b" * 40, {"data/train-00000-of-00001.parquet": bytes(data)}, refs=("main",),
                 kind="datasets")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as raised:
        load_samples(DatasetConfig(path="org/broken", **MAPPED))  # a Hub dataset is read up to the limit
    assert "dataset.path='org/broken': " in str(raised.value) and "is damaged" in str(raised.value)
    assert "\n" not in str(raised.value)
