"""The reader of a server's answers (pipeline.backends.openai.answers), shape by shape: what the API promises is read
into typed values, and anything else is a BadAnswer saying what was wrong (never a JSONDecodeError, IndexError,
KeyError, TypeError or AttributeError), or a ServerError carrying the server's own message."""

from __future__ import annotations

import json

import pytest

from pipeline.backends.openai import answers
from pipeline.backends.openai.answers import BadAnswer, ChatStream, ServerError

SSE = "text/event-stream"


def chunk(delta=None, finish=None, **more) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta or {},
                                                                       "finish_reason": finish}], **more}


def read_stream(events: list, content_type: str = SSE) -> answers.ChatAnswer:
    """Feed a body line by line as the backend does: in an event stream, each event a data line (its payload JSON
    unless a str) and a blank line; any other body, its lines as they are."""
    stream = ChatStream(content_type)
    for event in events:
        if content_type == SSE:
            event = f"data: {event if isinstance(event, str) else json.dumps(event)}\n"
        for line in event.split("\n"):
            stream.feed(line)
    return stream.answer()


def test_a_stream_is_read_into_text_reasoning_calls_finish_and_usage():
    stream = ChatStream("text/event-stream; charset=utf-8")
    lines = [": keep-alive", "event: message", f"data: {json.dumps(chunk({'role': 'assistant', 'reasoning': 'hm'}))}",
             "", f"data: {json.dumps(chunk({'content': '17'}))}", "",
             f"data: {json.dumps(chunk({'tool_calls': [{'index': 0, 'function': {'name': 'add', 'arguments': '{'}}]}))}",
             "", f"data: {json.dumps(chunk({'content': '3', 'tool_calls': [{'function': {'arguments': '}'}}]}, 'stop'))}",
             "", 'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4,',
             'data: "completion_tokens_details": {"reasoning_tokens": 1}}}', "", "data: [DONE]", "",
             "data: not JSON, but after [DONE]: never read", ""]
    shown = [piece.content for line in lines for piece in stream.feed(line)]
    answer = stream.answer()
    assert shown == ["", "17", "", "3"]  # each chunk's piece as soon as its event ends
    assert (answer.text, answer.reasoning, answer.finish) == ("173", "hm", "stop")
    assert answer.calls == {0: {"name": "add", "arguments": "{}"}}
    assert answer.usage == answers.Usage(prompt_tokens=9, completion_tokens=4, reasoning_tokens=1)


def test_a_stream_without_done_or_a_last_blank_line_still_ends():
    stream = ChatStream(SSE)
    stream.feed(f"data: {json.dumps(chunk({'content': 'ok'}, 'length'))}")
    assert (stream.answer().text, stream.answer().finish) == ("ok", "length")


def test_a_whole_json_answer_to_a_streamed_request_is_read_as_one_message():
    body = {"choices": [{"message": {"role": "assistant", "content": "hi", "reasoning_content": "r",
                                     "tool_calls": [{"id": "t", "function": {"name": "add", "arguments": {"a": 1}}}]},
                         "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 3}}
    answer = read_stream([json.dumps(body, indent=1)], "application/json")
    assert (answer.text, answer.reasoning, answer.finish, answer.usage.prompt_tokens) == ("hi", "r", "tool_calls", 3)
    assert answer.calls == {0: {"name": "add", "arguments": '{"a": 1}'}}  # decoded arguments sent back as JSON text


BAD_STREAMS = [
    (['{"choices": [{"delta": {"content": "17'], "a streamed chunk that is not JSON: '{\"choices\": [{\"delta\": {\"content\": \"17'"),
    ([[1, 2]], "a streamed chunk that is a list, not a JSON object"),
    (['"hello"'], 'a streamed chunk that is "hello" (text), not a JSON object'),
    ([{"choices": {"0": {}}}], "a streamed chunk whose choices is an object, not a list"),
    ([{"choices": ["a"]}], "a streamed chunk with a choice that is \"a\" (text), not an object"),
    ([{"choices": [{"delta": "hi"}]}], 'a delta that is "hi" (text), not an object'),
    ([chunk({"content": 173})], "a delta whose content is 173 (a number), not text"),
    ([chunk({"content": ["a"]})], "a delta whose content is a list, not text"),
    ([chunk({"reasoning_content": True})], "a delta whose reasoning_content is true (a boolean), not text"),
    ([chunk({"tool_calls": {"name": "add"}})], "a delta whose tool_calls is an object, not a list"),
    ([chunk({"tool_calls": ["add"]})], "a delta with a tool call that is \"add\" (text), not an object"),
    ([chunk({"tool_calls": [{"index": "0"}]})], 'a tool call whose index is "0" (text), not a whole number'),
    ([chunk({"tool_calls": [{"function": "add"}]})], 'a tool call whose function is "add" (text), not an object'),
    ([chunk({"tool_calls": [{"function": {"name": 5}}]})], "a tool call whose name is 5 (a number), not text"),
    ([chunk({"tool_calls": [{"function": {"arguments": 5}}]})], "a tool call whose arguments is 5 (a number), not text"),
    ([chunk({}, finish=1)], "a choice whose finish_reason is 1 (a number), not text"),
    ([chunk({"content": "a"}, usage=[])], "a usage that is a list, not an object"),
    ([chunk({"content": "a"}, usage={"prompt_tokens": "9"})], 'a usage whose prompt_tokens is "9" (text), not a whole number >= 0'),
    ([chunk({"content": "a"}, usage={"completion_tokens": -1})], "a usage whose completion_tokens is -1 (a number), not a whole"),
    ([chunk({"content": "a"}, usage={"completion_tokens": 2.5})], "a usage whose completion_tokens is 2.5 (a number), not a whole"),
    ([chunk({"content": "a"}, usage={"completion_tokens_details": 3})], "a usage whose completion_tokens_details is 3"),
    ([{"choices": []}, {"choices": [], "usage": {"prompt_tokens": 1}}], 'a stream without any choice (each chunk had "choices": [] or none)'),
    ([{"id": "c"}], 'a stream without any choice'),
    ([], "an event stream without data: an empty body"),
    (["hello there"], "a streamed chunk that is not JSON: 'hello there'"),
]


@pytest.mark.parametrize("events, said", BAD_STREAMS, ids=[said[:40] for _, said in BAD_STREAMS])
def test_every_bad_stream_is_a_bad_answer_saying_what_was_wrong(events, said):
    with pytest.raises(BadAnswer) as error:
        read_stream(events)
    assert str(error.value).startswith(said)


def test_a_line_that_is_no_sse_field_is_quoted_when_nothing_else_came():
    stream = ChatStream(SSE)
    stream.feed("Service Unavailable")
    with pytest.raises(BadAnswer, match=r"^an event stream without data: 'Service Unavailable'$"):
        stream.answer()


@pytest.mark.parametrize("content_type, kind", [("text/plain; charset=utf-8", "a text/plain body"),
                                                ("text/html", "a text/html body"), (None, None)])
def test_a_body_that_is_neither_a_stream_nor_json_is_refused_at_its_first_line(content_type, kind):
    stream = ChatStream(content_type)
    if kind is None:  # no content type: read as a stream (some servers send none)
        stream.feed(f"data: {json.dumps(chunk({'content': 'ok'}))}")
        assert stream.answer().text == "ok"
        return
    assert stream.feed("") == []
    with pytest.raises(BadAnswer) as error:
        stream.feed("  upstream   busy " + "x" * 100)
    assert str(error.value) == f"{kind}, not an event stream: '{'upstream busy ' + 'x' * 66}...'"
    mislabelled = ChatStream(content_type)  # an event stream under another content type is read
    for line in ("", ": a comment", f"data: {json.dumps(chunk({'content': 'ok'}))}", ""):
        mislabelled.feed(line)
    assert mislabelled.answer().text == "ok"
    empty = ChatStream(content_type)
    with pytest.raises(BadAnswer, match=rf"^{kind}, not an event stream: an empty body$"):
        empty.answer()


BAD_WHOLE = [
    ("oops", "an application/json body that is not JSON: 'oops'"),
    ("[]", "a chat completion that is a list, not a JSON object"),
    ('{"id": "c"}', "a chat completion without a choices list"),
    ('{"choices": []}', 'a chat completion with "choices": [] (no answer)'),
    ('{"choices": [{"finish_reason": "stop"}]}', "a chat completion whose choice has no message"),
    ('{"choices": [{"message": {"content": 7}}]}', "a message whose content is 7 (a number), not text"),
]


@pytest.mark.parametrize("body, said", BAD_WHOLE)
def test_every_bad_whole_chat_answer_is_a_bad_answer(body, said):
    with pytest.raises(BadAnswer) as error:
        read_stream([body], "application/json")
    assert str(error.value) == said


@pytest.mark.parametrize("body", [{"error": {"message": "model  overloaded", "code": 503}}, {"error": "model overloaded"}])
def test_an_error_object_is_the_servers_own_words(body):
    with pytest.raises(ServerError, match="^model overloaded$"):
        read_stream([chunk({"content": "a"}), body])
    with pytest.raises(ServerError, match="^model overloaded$"):
        answers.text_completion(body)


# --- text completions and echoed log-probabilities ----------------------------------------------------------


def test_a_text_completion_is_read_with_its_usage_and_stop_reason():
    answer = answers.text_completion({"choices": [{"text": "173", "finish_reason": "stop", "stop_reason": "</think>"}],
                                      "usage": {"prompt_tokens": 20, "completion_tokens": 4}})
    assert (answer.text, answer.finish, answer.stop_reason) == ("173", "stop", "</think>")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (20, 4)
    assert answers.text_completion({"choices": [{"text": ""}]}).usage == answers.Usage()  # no usage: zeros


BAD_COMPLETIONS = [
    ("not a dict", 'a completion that is "not a dict" (text), not a JSON object'),
    ({"object": "text_completion"}, "a completion without a choices list"),
    ({"choices": []}, 'a completion with "choices": [] (no answer)'),
    ({"choices": [None]}, "a completion with a choice that is null, not an object"),
    ({"choices": [{"finish_reason": "stop"}]}, "a completion whose choice has no text"),
    ({"choices": [{"text": 173}]}, "a completion whose text is 173 (a number), not text"),
    ({"choices": [{"text": "a", "finish_reason": ["stop"]}]}, "a completion whose finish_reason is a list, not text"),
    ({"choices": [{"text": "a"}], "usage": {"completion_tokens": True}}, "a usage whose completion_tokens is true"),
]


@pytest.mark.parametrize("data, said", BAD_COMPLETIONS)
def test_every_bad_text_completion_is_a_bad_answer(data, said):
    with pytest.raises(BadAnswer) as error:
        answers.text_completion(data)
    assert str(error.value).startswith(said)


def echoed(**logprobs) -> dict:
    good = {"tokens": ["a", "b", "x"], "token_logprobs": [None, -1, -0.5], "text_offset": [0, 1, 2],
            "top_logprobs": [None, {"b": -1.0}, {"x": -0.5}]}
    return {"choices": [{"text": "abx", "logprobs": {**good, **logprobs}}]}


def test_echoed_logprobs_are_read_and_lined_up():
    read = answers.echoed_logprobs(echoed())
    assert (read.tokens, read.token_logprobs, read.text_offset) == (["a", "b", "x"], [None, -1.0, -0.5], [0, 1, 2])
    assert answers.echoed_logprobs(echoed(top_logprobs=None)).top_logprobs == [None, None, None]


BAD_LOGPROBS = [
    ({"choices": [{"text": "abx"}]}, "a completion without logprobs"),
    ({"choices": [{"text": "abx", "logprobs": [1]}]}, "logprobs that is a list, not an object"),
    (echoed(tokens=None), "logprobs without a tokens list"),
    (echoed(text_offset="0 1 2"), 'logprobs whose text_offset is "0 1 2" (text), not a list'),
    (echoed(token_logprobs=[None, "-1", -0.5]), "logprobs with a token_logprobs entry that is not a number"),
    (echoed(token_logprobs=[None, float("nan"), -0.5]), "logprobs with a token_logprobs entry that is not a number"),
    (echoed(tokens=["a", 2, "x"]), "logprobs with a token that is not text"),
    (echoed(text_offset=[0, 1.5, 2]), "logprobs with a text_offset entry that is not a whole number >= 0"),
    (echoed(text_offset=[0, -1, 2]), "logprobs with a text_offset entry that is not a whole number >= 0"),
    (echoed(tokens=["a", "b"]), "logprobs whose tokens, token_logprobs, text_offset and top_logprobs differ in length"),
    (echoed(top_logprobs=[None, {"b": "x"}, None]), "logprobs with a top_logprobs entry that is not an object of numbers"),
    (echoed(top_logprobs={"b": -1}), "logprobs whose top_logprobs is an object, not a list"),
    ({"choices": []}, 'a completion with "choices": [] (no answer)'),
]


@pytest.mark.parametrize("data, said", BAD_LOGPROBS)
def test_every_bad_echo_is_a_bad_answer(data, said):
    with pytest.raises(BadAnswer) as error:
        answers.echoed_logprobs(data)
    assert str(error.value) == said


# --- planning: model list and /tokenize -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, [], {"data": {}}, {"data": [{"name": "m"}]}, {"data": [{"id": 7}]}, {"data": ["m"]}])
def test_anything_but_a_model_list_is_a_bad_answer(data):
    with pytest.raises(BadAnswer, match="^not a model list$"):
        answers.model_list(data)
    assert answers.model_list({"data": [{"id": "m", "max_model_len": 9}]}) == [{"id": "m", "max_model_len": 9}]


def test_a_token_count_is_count_or_the_tokens_length():
    assert answers.token_count({"count": 12}) == 12 and answers.token_count({"tokens": [1, 2, 3]}) == 3
    for data in ({"count": True}, {"count": "12"}, {"count": -1}, [], {"detail": "Not Found"}):
        with pytest.raises(BadAnswer):
            answers.token_count(data)


def test_a_body_that_is_not_json_names_its_content_type_and_its_start():
    with pytest.raises(BadAnswer) as error:
        answers.json_body("<html>\n  <body>Welcome " + "to nginx " * 20, "text/html; charset=utf-8")
    assert str(error.value).startswith("a text/html body that is not JSON: '<html> <body>Welcome to nginx")
    assert str(error.value).endswith("...'") and "\n" not in str(error.value)
    with pytest.raises(BadAnswer, match="^a body without a content type that is not JSON: an empty body$"):
        answers.json_body("", None)
    assert answers.json_body('{"a": 1}', "text/plain") == {"a": 1}  # the content type is not held against a JSON body


def test_a_bad_answer_names_the_server_and_the_request():
    error = BadAnswer('a completion with "choices": [] (no answer)')
    assert error.at("http://***@host:8000/v1", "POST /completions") == (
        'the server at http://***@host:8000/v1 answered POST /completions with a completion with "choices": [] '
        "(no answer)")
