"""The OpenAI-compatible server backend against a real `transformers serve` over the demo model, and
against small stdlib servers for what a real server cannot be made to do on demand (an HTML page, a
server that wants a key, vLLM's /tokenize, streamed tool calls and reasoning, 429 / 500 / 400 and a
server too slow for the timeout through a fault-injecting proxy in front of the real one).

`transformers serve` (started once for the file, about 10 s): the demo model folder's absolute path
is its model id; it streams, reports usage when asked (stream_options.include_usage), answers a
model it does not serve with 404, has no /tokenize, and includes a matched stop string in the text
(the backend cuts it, as the in-process backend does).
"""

from __future__ import annotations

import json
import time

import pytest

from pipeline.backends.base import Request
from pipeline.core.config import ASSETS_DIR
from pipeline.core.errors import ConfigError, UserError
from pipeline.core.records import Message, ToolCall
from tests.helpers.openai_server import (
    CHAT,
    FaultProxy,
    StubServer,
    free_port,
    serving_extra_missing,
    sse,
)

DEMO = ASSETS_DIR / "demo_model"
SECRET = "sk-test-4f1b9c2e77"

pytestmark = pytest.mark.skipif(serving_extra_missing() is not None, reason=str(serving_extra_missing()))


def backend(base_url: str, model: str, **settings):
    from pipeline.backends.openai import OpenAIBackend, OpenAIConfig

    return OpenAIBackend(OpenAIConfig(base_url=base_url, **settings), model)


def ask(prompt: str, max_new_tokens: int = 8, **fields) -> Request:
    return Request([Message("user", prompt)], max_new_tokens=max_new_tokens, key=prompt, **fields)


SUMS = [ask(f"What is {a}+{b}?") for a, b in [(86, 87), (45, 15), (97, 89), (13, 71)]]


# --- plan -----------------------------------------------------------------------------------------


def test_plan_checks_the_served_model_and_labels_estimated_token_counts(served):
    plan = backend(served.base_url, served.model).plan(SUMS)
    assert plan.identity.backend == "openai" and plan.identity.model == served.model
    assert plan.identity.endpoint == served.base_url and plan.identity.reported["owned_by"] == "local"
    assert plan.capabilities.streaming and plan.capabilities.tools
    # transformers serve has no /tokenize and no local tokenizer was named: an estimate, said to be one
    assert plan.token_source == "estimate" and len(plan.prompt_tokens) == len(SUMS)
    assert all(count > 0 for count in plan.prompt_tokens)
    assert any("estimate" in warning for warning in plan.warnings)
    assert plan.context_length is None


def test_plan_counts_with_a_named_local_tokenizer_as_the_server_does(served):
    plan = backend(served.base_url, served.model, tokenizer=str(DEMO)).plan(SUMS[:1])
    assert plan.token_source == "tokenizer"
    [completion] = backend(served.base_url, served.model).generate(SUMS[:1])
    assert plan.prompt_tokens == [completion.prompt_tokens]  # the server's usage agrees with the local count


def test_a_model_the_server_does_not_serve_is_one_line_listing_what_it_serves(served):
    with pytest.raises(UserError) as error:
        backend(served.base_url, "llama-70b").plan(SUMS)
    assert str(error.value) == f"runtime.model='llama-70b' is not served by {served.base_url}: it serves {served.model}"


def test_an_unreachable_server_is_one_line_naming_it():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UserError, match=rf"^cannot reach the server at {url} \(backend.base_url\): .*is it running\?$"):
        backend(url, "m", timeout_s=2).plan(SUMS)


def test_a_server_that_is_not_openai_compatible_is_one_line():
    page = lambda handler, body: (200, "<html><body>Welcome to nginx!</body></html>", "text/html")  # noqa: E731
    with StubServer({("GET", "*"): page}) as stub:
        with pytest.raises(UserError, match=r"is not OpenAI-compatible: GET /models answered text/html, not a model list"):
            backend(stub.base_url, "m").plan(SUMS)


def _auth_routes(echo_key_on_chat: bool = False):
    def models(handler, body):
        if handler.headers.get("authorization") != f"Bearer {SECRET}":
            return 401, json.dumps({"error": {"message": "invalid api key"}})
        return 200, json.dumps({"object": "list", "data": [{"id": "stub", "object": "model", "max_model_len": 2048}]})

    def tokenize(handler, body):  # vLLM's: the chat template applied, then counted
        messages = json.loads(body)["messages"]
        return 200, json.dumps({"count": 100 + len(messages[0]["content"]), "max_model_len": 2048})

    def chat(handler, body):  # a server that repeats what it was sent, key included, in its error
        return 400, json.dumps({"error": {"message": f"bad request from {handler.headers.get('authorization')}"}})

    return {("GET", "/v1/models"): models, ("POST", "/tokenize"): tokenize, ("POST", CHAT): chat}


def test_a_server_that_wants_a_key_names_the_unset_variable(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    with StubServer(_auth_routes()) as stub:
        with pytest.raises(UserError) as error:
            backend(stub.base_url, "stub", api_key_env="MY_KEY").plan(SUMS)
    assert str(error.value) == (f"the server at {stub.base_url} wants an API key (401) and the environment variable "
                                "MY_KEY (backend.api_key_env) is unset")


def test_a_refused_key_is_one_line_and_the_key_never_leaves(monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET + "-wrong")
    with StubServer(_auth_routes()) as stub:
        with pytest.raises(UserError, match=r"refused the API key in MY_KEY \(401 Unauthorized\)$") as error:
            backend(stub.base_url, "stub", api_key_env="MY_KEY").plan(SUMS)
    assert SECRET not in str(error.value)


def test_with_the_key_the_plan_takes_server_counts_and_context_and_the_key_appears_nowhere(monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    with StubServer(_auth_routes()) as stub:
        openai = backend(stub.base_url, "stub", api_key_env="MY_KEY", max_retries=0)
        plan = openai.plan(SUMS)
        [failed] = openai.generate(SUMS[:1])
    assert plan.token_source == "server" and plan.context_length == 2048
    assert plan.prompt_tokens == [100 + len(request.messages[0].content) for request in SUMS]
    assert plan.identity.reported["max_model_len"] == 2048
    # sent where it belongs, and masked in everything that is recorded, even an error that echoes it
    assert any(headers.get("authorization") == f"Bearer {SECRET}" for _, _, headers, _ in stub.seen)
    assert failed.finish_reason == "error" and failed.error.startswith("What is 86+87?: 400 bad request from Bearer ***")
    assert SECRET not in json.dumps(plan.to_dict(), default=str) + failed.error


@pytest.mark.parametrize("settings, message", [
    ({"base_url": "localhost:8000/v1"}, r"^backend.base_url='localhost:8000/v1' is not allowed: expected an http:// or https:// URL"),
    ({"base_url": "ftp://host/v1"}, r"^backend.base_url='ftp://host/v1' is not allowed"),
    ({"base_url": "http://admin:hunter22@host:99999/v1"}, r"^backend.base_url='http://\*\*\*@host:99999/v1' is not allowed"),
    ({"max_concurrency": 0}, r"^backend.max_concurrency=0 is not allowed: expected a whole number >= 1$"),
    ({"max_retries": -1}, r"^backend.max_retries=-1 is not allowed: expected a whole number >= 0$"),
    ({"timeout_s": 0}, r"^backend.timeout_s=0 is not allowed: expected a number > 0 \(seconds\)$"),
    ({"token_limit_param": "max_new_tokens"}, r"^backend.token_limit_param='max_new_tokens' is not allowed: expected max_tokens or max_completion_tokens$"),
    ({"api_key_env": SECRET}, r"^backend.api_key_env='<hidden>' is not allowed: expected the NAME of an environment variable"),
    ({"headers": {"X-Token": "a\nb"}}, r"^backend.headers.X-Token='<hidden>' is not allowed"),
    ({"modalities": ["video"]}, r"^backend.modalities=\['video'\] is not allowed"),
])
def test_bad_settings_are_one_line_before_any_request(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        backend(settings.pop("base_url", "http://127.0.0.1:1/v1"), "m", **settings)
    assert "\n" not in str(error.value) and SECRET not in str(error.value) and "hunter22" not in str(error.value)


# --- generate against the real server -------------------------------------------------------------


class Sink:
    streams_text = True

    def __init__(self) -> None:
        self.text: dict[int, str] = {}
        self.done: dict[int, str] = {}

    def on_text(self, row: int, text: str) -> None:
        self.text[row] = self.text.get(row, "") + text

    def on_complete(self, row: int, text: str) -> None:
        self.done[row] = text


def test_greedy_generation_repeats_streams_and_counts_tokens(served):
    openai = backend(served.base_url, served.model, max_concurrency=2)
    sink = Sink()
    first = openai.generate(SUMS, sink)
    second = openai.generate(SUMS)
    assert [c.text for c in first] == [c.text for c in second] == ["173", "60", "186", "84"]  # the demo model's sums
    for completion in first:
        assert completion.error is None and completion.finish_reason == "stop"
        assert completion.prompt_tokens == 18 and completion.completion_tokens == len(completion.text) + 1  # digits, end
        assert 0 < completion.ttft_s <= completion.latency_s
    assert sink.text == sink.done == {row: c.text for row, c in enumerate(first)}


def test_stop_strings_cut_the_text_and_max_tokens_ends_with_length(served):
    stopped, cut, limited = backend(served.base_url, served.model, token_limit_param="max_completion_tokens").generate([
        ask("What is 86+87?", stop=["7"]), ask("What is 97+89?", stop=["x", "8"]), ask("What is 86+87?", max_new_tokens=2)])
    assert (stopped.text, stopped.finish_reason) == ("1", "stop")  # the stop string itself is not part of the answer
    assert (cut.text, cut.finish_reason) == ("1", "stop")
    assert (limited.text, limited.finish_reason, limited.completion_tokens) == ("17", "length", 2)


def test_requests_in_flight_never_exceed_max_concurrency(served):
    with FaultProxy(served.port, delay_s=0.3) as proxy:
        completions = backend(proxy.base_url, served.model, max_concurrency=2).generate(SUMS + SUMS[:2])
    assert [c.error for c in completions] == [None] * 6
    assert len(proxy.chat_times) == 6 and proxy.peak == 2  # bounded, and the bound is used


# --- faults between the backend and the server ----------------------------------------------------


def test_429_with_retry_after_is_retried_after_the_wait_the_server_asks(served):
    with FaultProxy(served.port, faults=[{"status": 429, "headers": {"Retry-After": "1"}}]) as proxy:
        openai = backend(proxy.base_url, served.model, backoff_s=0.01)
        started = time.monotonic()
        [completion] = openai.generate(SUMS[:1])
    assert completion.error is None and completion.text == "173"
    assert openai.attempts == 2 and len(proxy.chat_times) == 2
    assert proxy.chat_times[1] - proxy.chat_times[0] >= 1.0  # Retry-After, not the 10 ms backoff
    assert time.monotonic() - started < 5


def test_a_500_is_retried_and_a_400_is_not(served):
    faults = [{"status": 500}, {"status": 400, "body": "unsupported parameter"}]
    with FaultProxy(served.port, faults=faults) as proxy:
        openai = backend(proxy.base_url, served.model, backoff_s=0.01, max_concurrency=1)
        recovered, refused, fine = openai.generate(SUMS[:3])
    assert recovered.error is None and recovered.text == "173"
    assert (refused.finish_reason, refused.text) == ("error", "")
    assert refused.error == "What is 45+15?: 400 unsupported parameter" and not refused.unavailable
    assert fine.error is None and fine.text == "186"  # the run goes on after a failed request
    assert openai.attempts == 4 and len(proxy.chat_times) == 4  # 500 + retry, 400 alone, the third


def test_a_server_too_slow_for_the_timeout_becomes_an_error_after_the_retries(served):
    with FaultProxy(served.port, delay_s=3) as proxy:
        openai = backend(proxy.base_url, served.model, timeout_s=0.5, max_retries=1, backoff_s=0.01)
        started = time.monotonic()
        [completion] = openai.generate(SUMS[:1])
        elapsed = time.monotonic() - started
    assert completion.finish_reason == "error"
    assert completion.error == "What is 86+87?: no complete answer within backend.timeout_s=0.5s after 2 attempts"
    assert not completion.unavailable  # slow is not gone: an error record, and the run goes on
    assert openai.attempts == 2 and len(proxy.chat_times) == 2 and elapsed < 2.5


def test_a_server_that_no_longer_accepts_connections_is_unavailable_after_the_retries_not_a_request_error():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: as a server killed after the plan
    openai = backend(url, "m", max_retries=2, backoff_s=0.01)
    completions = openai.generate(SUMS[:2])
    assert all(c.unavailable and c.finish_reason == "error" for c in completions)
    assert completions[0].error == (f"the server at {url} stopped answering: connection to the server failed: "
                                    "connection refused after 3 attempts")
    assert openai.attempts == 6


def test_retries_stop_at_max_retries_for_a_server_that_keeps_failing(served):
    with FaultProxy(served.port, faults=[{"status": 503}] * 5) as proxy:
        openai = backend(proxy.base_url, served.model, max_retries=2, backoff_s=0.01)
        [completion] = openai.generate(SUMS[:1])
    assert completion.error.endswith("503 injected 503 after 3 attempts") and len(proxy.chat_times) == 3


# --- what the demo model cannot show: native tool calls and reasoning -------------------------------


def test_streamed_tool_calls_and_reasoning_arrive_apart_from_the_answer():
    def chunk(delta, finish=None, usage=None):
        return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "stub",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **({"usage": usage} if usage else {})}

    stream = sse([
        chunk({"role": "assistant", "reasoning_content": "I should add. "}),
        chunk({"reasoning_content": "Use the tool."}),
        chunk({"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "add", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": 2, "}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"b\": 3}"}}]}),
        chunk({}, finish="tool_calls"),
        {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "stub", "choices": [],
         "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                   "completion_tokens_details": {"reasoning_tokens": 7}}},
    ])
    routes = {("GET", "/v1/models"): lambda h, b: (200, json.dumps({"data": [{"id": "stub"}]})),
              ("POST", CHAT): lambda h, b: (200, stream, "text/event-stream")}
    add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    earlier = [Message("user", "2+3?"), Message("assistant", "", tool_calls=(ToolCall("add", {"a": 1, "b": 1}),)),
               Message("tool", "2", name="add"), Message("user", "and 2+3?")]
    with StubServer(routes) as stub:
        [completion] = backend(stub.base_url, "stub").generate([Request(earlier, 32, tools=[add], seed=7)])
        sent = json.loads(stub.seen[-1][3])
    assert completion.tool_calls == [ToolCall("add", {"a": 2, "b": 3})] and completion.finish_reason == "tool"
    assert (completion.text, completion.reasoning) == ("", "I should add. Use the tool.")
    assert (completion.prompt_tokens, completion.completion_tokens, completion.reasoning_tokens) == (30, 12, 7)
    # what was sent: the per-request seed, the tools, usage asked for, a tool result paired with its call
    assert sent["seed"] == 7 and sent["tools"] == [add] and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"][1]["tool_calls"][0]["id"] == sent["messages"][2]["tool_call_id"] == "call_1_0"


def _text_stream(text: str) -> str:
    return sse([{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "stub",
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": "stop"}]}])


def test_tool_calls_a_server_passes_through_as_text_are_read_from_it_only_when_tools_were_offered():
    said = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    routes = {("GET", "/v1/models"): lambda h, b: (200, json.dumps({"data": [{"id": "stub"}]})),
              ("POST", CHAT): lambda h, b: (200, _text_stream(said), "text/event-stream")}
    add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    with StubServer(routes) as stub:
        with_tools, without = backend(stub.base_url, "stub").generate([ask("1+2?", tools=[add]), ask("1+2?")])
    assert (with_tools.tool_calls, with_tools.finish_reason) == ([ToolCall("add", {"a": 1, "b": 2})], "tool")
    assert (with_tools.text, with_tools.message_text) == (said, "")  # as in process: the markup stays in the text
    assert (without.tool_calls, without.text, without.finish_reason) == ([], said, "stop")


def test_azure_style_api_version_and_extra_headers_reach_the_server(monkeypatch):
    monkeypatch.setenv("AZURE_KEY", SECRET)
    # Azure lists base models in /models, not the deployment a request names
    routes = {("GET", "/v1/models"): lambda h, b: (200, json.dumps({"data": [{"id": "gpt-4o"}]})),
              ("POST", "/v1/deployments/my-gpt/chat/completions"): lambda h, b: (200, _text_stream("hi"), "text/event-stream")}
    with StubServer(routes) as stub:
        openai = backend(stub.base_url, "my-gpt", api_key_env="AZURE_KEY", api_version="2024-10-21",
                         headers={"X-Tenant": "lab"}, token_limit_param="max_completion_tokens")
        plan = openai.plan(SUMS[:1])
        openai.load()
        [completion] = openai.generate(SUMS[:1])
    assert completion.text == "hi" and any("not in the server's model list" in w for w in plan.warnings)
    assert [path.split("?")[0] for _, path, _, _ in stub.seen] == ["/v1/models", "/tokenize", "/v1/models",
                                                                   "/v1/deployments/my-gpt/chat/completions"]
    for _, path, headers, _ in stub.seen:  # plan, load and the request alike
        assert "api-version=2024-10-21" in path and headers["api-key"] == SECRET and headers["x-tenant"] == "lab"
    chat_body = stub.seen[-1][3]
    assert json.loads(chat_body)["max_completion_tokens"] == 8 and "max_tokens" not in json.loads(chat_body)
    assert {option.name: option.value for option in plan.options}["headers"] == ["X-Tenant"]  # names, never values


def test_a_tool_round_trip_with_the_tool_demo_model(tool_served):
    from pipeline.answering.demo_tools import add
    from pipeline.answering.tools import tool_schema

    schema = tool_schema(add)
    question = [Message("user", "What is 7311+7890?")]
    openai = backend(tool_served.base_url, tool_served.model)
    [call] = openai.generate([Request(question, 64, tools=[schema])])
    assert (call.tool_calls, call.finish_reason, call.error) == ([ToolCall("add", {"a": 7311, "b": 7890})], "tool", None)
    answered = question + [Message("assistant", call.message_text, tool_calls=tuple(call.tool_calls)),
                           Message("tool", str(add(7311, 7890)), name="add")]
    [answer] = openai.generate([Request(answered, 64, tools=[schema])])
    assert (answer.text, answer.finish_reason, answer.tool_calls) == ("15201", "stop", [])


def test_generate_works_from_inside_a_running_event_loop():
    import asyncio

    routes = {("GET", "/v1/models"): lambda h, b: (200, json.dumps({"data": [{"id": "stub"}]})),
              ("POST", CHAT): lambda h, b: (200, _text_stream("ok"), "text/event-stream")}

    async def inside():  # as in a notebook, where a loop is already running
        return backend(stub.base_url, "stub").generate([ask("hi")])

    with StubServer(routes) as stub:
        [completion] = asyncio.run(inside())
    assert completion.text == "ok"
