"""Tools: schemas derived from signatures and docstrings (checked against transformers' own), loading
from config, running with a time limit, and parsing the calls out of generated text."""

from __future__ import annotations

import time
from typing import Literal, Optional

import pytest

from pipeline.answering.tools import call_tool, load_tools, result_text, tool_schema
from pipeline.core.errors import UserError
from pipeline.core.records import ToolCall
from pipeline.core.tool_calls import parse_tool_calls


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: Optional[int] = None,
                tags: list[str] = (), extra: dict[str, float] = None) -> str:
    """Look up the weather.

    A second paragraph, also for the model.

    Args:
        city: The city to look
            the weather up for.
        unit: The temperature unit.
        days: How many days ahead.
        tags: Labels.
        extra: Anything else.

    Returns:
        The forecast.
    """
    return f"sunny in {city}"


def slow(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "done"


def broken(x: int) -> int:
    """Always fails.

    Args:
        x: Ignored.
    """
    raise ValueError("no luck")


def lookup(key: str, table: str) -> str:
    """Find a key in a table.

    Args:
        key: What to find.
        table: Bound from config, never shown to the model.
    """
    return f"{table}:{key}"


def test_schema_matches_transformers_get_json_schema():
    from transformers.utils import get_json_schema

    assert tool_schema(get_weather) == get_json_schema(get_weather)
    assert tool_schema(slow) == get_json_schema(slow)


def test_schema_shape_and_descriptions():
    schema = tool_schema(get_weather)["function"]
    assert schema["name"] == "get_weather" and schema["description"] == "Look up the weather.\n\nA second paragraph, also for the model."
    properties = schema["parameters"]["properties"]
    assert properties["city"] == {"type": "string", "description": "The city to look the weather up for."}
    assert properties["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert properties["days"] == {"type": "integer", "nullable": True, "description": "How many days ahead."}
    assert properties["tags"]["items"] == {"type": "string"}
    assert schema["parameters"]["required"] == ["city"]
    assert schema["return"] == {"type": "string", "description": "The forecast."}


def test_load_tools_binds_config_keys_and_hides_them_from_the_model():
    (tool,) = load_tools([{"_target_": "tests.answering.test_tools.lookup", "table": "capitals"}])
    assert list(tool.schema["function"]["parameters"]["properties"]) == ["key"]
    assert call_tool(tool, {"key": "France"}, 5).text == "capitals:France"


@pytest.mark.parametrize("spec, message", [
    ({"_target_": "nowhere.at_all"}, r"session.tools\[0\]._target_=nowhere.at_all: cannot import nowhere; the module"),
    ({"_target_": "tests.answering.test_tools.Calculator.nothing"}, "tests.answering.test_tools has no attribute 'Calculator.nothing'"),
    ({"_target_": "tests.answering.test_tools.missing"}, "tests.answering.test_tools has no attribute 'missing'"),
    ({"_target_": "add"}, "give a dotted path"),
    ({"_target_": "tests.answering.test_tools.ToolCall"}, "not a function"),
    ({"_target_": "tests.answering.test_tools.lookup", "colour": 1}, r"session.tools\[0\].colour: .*has no parameter 'colour'"),
    ({"_target_": "tests.answering.test_tools.untyped"}, "parameter 'x' of untyped has no type hint"),
])
def test_bad_tool_entries_are_refused_by_name(spec, message):
    with pytest.raises(UserError, match=message):
        load_tools([spec])


def untyped(x):
    """No hints."""
    return x


class Calculator:
    @staticmethod
    def add(a: int, b: int) -> int:
        """Add.

        Args:
            a: One.
            b: Two.
        """
        return a + b


def test_a_function_inside_a_class_is_found_by_its_dotted_path():
    (tool,) = load_tools([{"_target_": "tests.answering.test_tools.Calculator.add"}])
    assert tool.name == "add" and call_tool(tool, {"a": 2, "b": 3}, 5).text == "5"


def test_two_tools_with_one_name_are_refused():
    with pytest.raises(UserError, match="a second tool named 'slow'"):
        load_tools([{"_target_": "tests.answering.test_tools.slow"}, {"_target_": "tests.answering.test_tools.slow"}])


def test_a_call_that_fails_overruns_or_has_wrong_arguments_is_text_for_the_model():
    slow_tool, broken_tool = load_tools([{"_target_": "tests.answering.test_tools.slow"}, {"_target_": "tests.answering.test_tools.broken"}])
    fine = call_tool(slow_tool, {"seconds": 0}, 5)
    assert fine.ok and fine.text == "done"
    started = time.perf_counter()
    late = call_tool(slow_tool, {"seconds": 30}, 0.2)
    assert not late.ok and "did not finish within 0.2 s" in late.text and time.perf_counter() - started < 5
    failed = call_tool(broken_tool, {"x": 1}, 5)
    assert not failed.ok and failed.text == "broken failed: ValueError: no luck"
    wrong = call_tool(broken_tool, {"y": 1}, 5)
    assert not wrong.ok and wrong.text.startswith("wrong arguments for broken:")


def test_arguments_of_the_wrong_json_type_are_refused_before_the_call():
    (tool,) = load_tools([{"_target_": "tests.answering.test_tools.get_weather"}])
    assert call_tool(tool, {"city": "Oslo", "days": None}, 5).ok
    wrong = call_tool(tool, {"city": 7}, 5)
    assert not wrong.ok and wrong.text == "wrong arguments for get_weather: city must be a JSON string, got 7"
    assert "unit must be one of 'celsius', 'fahrenheit', got 'kelvin'" in call_tool(tool, {"city": "Oslo",
                                                                                             "unit": "kelvin"}, 5).text
    (adder,) = load_tools([{"_target_": "pipeline.answering.demo_tools.add"}])
    assert call_tool(adder, {"a": "4821", "b": 3907}, 5).text == \
        "wrong arguments for add: a must be a JSON integer, got '4821'"
    assert not call_tool(adder, {"a": True, "b": 1}, 5).ok and call_tool(adder, {"a": 1, "b": 2}, 5).text == "3"


def test_results_are_text():
    assert result_text("8728") == "8728" and result_text(8728) == "8728" and result_text({"a": [1]}) == '{"a": [1]}'


def test_parse_hermes_blocks_llama_json_and_plain_answers():
    parsed = parse_tool_calls('Let me see. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
                              '<tool_call>{"name": "add", "arguments": "{\\"a\\": 3, \\"b\\": 4}"}</tool_call>')
    assert parsed.calls == [ToolCall("add", {"a": 1, "b": 2}), ToolCall("add", {"a": 3, "b": 4})]
    assert parsed.text == "Let me see." and not parsed.problems
    llama = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert llama.calls == [ToolCall("get_weather", {"city": "Oslo"})] and llama.text == ""
    plain = parse_tool_calls("8728")
    assert not plain.wants_tools and plain.text == "8728"
    assert not parse_tool_calls('{"answer": 3}').wants_tools


@pytest.mark.parametrize("text, problem", [
    ('<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>', "is not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'has no "name"'),
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', "arguments that are not a JSON object"),
    ('<tool_call>{"name": "add", "argu', "has no </tool_call> (cut short by max_new_tokens?)"),
])
def test_unreadable_calls_are_problems_not_answers(text, problem):
    parsed = parse_tool_calls(text)
    assert parsed.wants_tools and not parsed.calls
    assert problem in parsed.problems[0]
