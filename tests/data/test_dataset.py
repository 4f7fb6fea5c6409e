"""Dataset files: good records become Samples; each kind of bad line is refused with file:line."""

from __future__ import annotations

import pytest

from pipeline.core.config import DatasetConfig
from pipeline.core.errors import UserError
from pipeline.core.records import Message
from pipeline.data.dataset import load_samples
from tests.conftest import write_jsonl


def test_prompt_and_messages_records(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "a", "prompt": "What is 1+2?", "reference": 3},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        "",
    ])
    first, second = load_samples(DatasetConfig(path=str(path)))
    assert first.id == "a" and first.messages == (Message("user", "What is 1+2?"),) and first.reference == "3"
    assert second.id == "2" and second.reference is None  # the line number stands in for a missing id
    assert [m.role for m in second.messages] == ["system", "user"]


def test_messages_may_carry_tool_steps_as_a_saved_conversation_has_them(tmp_path):
    saved = [{"role": "user", "content": "What is 1111+2222?"},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"type": "function", "function": {"name": "add", "arguments": {"a": 1111, "b": 2222}}}]},
             {"role": "tool", "content": "3333", "name": "add"},
             {"role": "assistant", "content": "3333"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "t", "messages": saved, "turns": ["And 1+1?"]}])
    (sample,) = load_samples(DatasetConfig(path=str(path)))
    assert [m.role for m in sample.messages] == ["user", "assistant", "tool", "assistant"]
    assert sample.messages[1].tool_calls[0].arguments == {"a": 1111, "b": 2222}
    assert sample.messages[2].name == "add"


def test_limit_keeps_the_first_samples(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": i, "prompt": "x"} for i in range(10)])
    assert [s.id for s in load_samples(DatasetConfig(path=str(path), limit=3))] == ["0", "1", "2"]


@pytest.mark.parametrize("lines,expected", [
    (['{"id": 1, "prompt": "a"}', '{"id": 2, "prompt": '], "d.jsonl:2: not valid JSON"),
    (['[1, 2]'], "d.jsonl:1: expected a JSON object"),
    (['{"id": 1}'], "d.jsonl:1: a record needs a prompt"),
    (['{"id": 1, "prompt": ""}'], "prompt must be a non-empty string"),
    (['{"id": 1, "prompt": "a", "messages": []}'], "give a prompt, or messages and/or turns, not both"),
    (['{"id": 1, "messages": [{"role": "robot", "content": "x"}]}'], "messages[0] must be"),
    (['{"id": 1, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}'],
     "the last message must not be the assistant's"),
    (['{"id": 1, "prompt": "a"}', '{"id": 1, "prompt": "b"}'], "d.jsonl:2: duplicate id '1' (first on line 1)"),
    (['{"id": 1, "messages": [{"role": "assistant", "content": "", "tool_calls": [{"name": "add"}]}, '
      '{"role": "user", "content": "x"}]}'], "messages[0].tool_calls must be a list of"),
    (['{"id": null, "prompt": "a"}'], "id must be a non-empty string or an integer"),
    (['{"id": 1, "prompt": "a", "reference": [1]}'], "reference must be a string or a number"),
    (['', '  '], "the file has no samples"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, lines, expected):
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(UserError) as raised:
        load_samples(DatasetConfig(path=str(path)))
    assert expected in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_samples(DatasetConfig(path=str(tmp_path / "nope.jsonl")))
