"""One conformance suite for every backend (pipeline.backends.base): the same checks, the same requests.

Each backend enters through a fixture named `<name>_subject` that returns a `Subject`: the backend,
loaded, and the tool schemas it offers for the tool round trip (the `add` calculator). The
fixtures here are the scripted fake (no model) and the transformers backend over the tool demo
model (pipeline/assets/tool_model, which calls `add` when offered it and answers a number
otherwise), the fake behind the response cache (pipeline.backends.cache: every check's repeated
requests are read back from it, beside new ones in the same batch), and the OpenAI-compatible backend against a real `transformers serve` over a sampling copy
of the tool model (started once for the module, about 10 s; it counts tokens with the tool model's own tokenizer, named in
backend.tokenizer, since transformers serve has no /tokenize). To add a backend, add its name to
BACKENDS and a module- or session-scoped fixture `<name>_subject`; nothing else changes.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from pipeline.backends.base import Backend, Completion, Request
from pipeline.backends.fake import FakeBackend, Reply
from pipeline.core.config import ASSETS_DIR, SessionConfig
from pipeline.core.records import Message, ToolCall
from tests.conftest import make_config, write_jsonl

BACKENDS = ["fake", "cached", "transformers", "openai"]
TOOL_MODEL = ASSETS_DIR / "tool_model"
QUESTION = "What is 4821+3907?"
SUM = "8728"
SHORT = "1+2?"
# over a 256-token context: the tool model has a token a character, the fake a word
LONG = "What is " + " + ".join(["1"] * 200) + "?"


@dataclass
class Subject:
    backend: Backend  # loaded
    tools: list[dict[str, Any]]  # the JSON schemas offered for the tool round trip (the `add` tool)
    failing: Optional[Request] = None  # a request this backend fails; None: a prompt over the context (LONG)
    # checks the model behind the backend cannot show, and why (a server's limits, not the backend's)
    unchecked: dict[str, str] = field(default_factory=dict)


def arithmetic(request: Request) -> Optional[Reply]:
    """The fake's stand-in for the tool model: call `add` when offered it, repeat the tool's result,
    and otherwise leave the request to the fake's own (seeded) answer."""
    last = request.messages[-1]
    if last.role == "tool":
        return Reply(last.content)
    numbers = re.findall(r"\d+", last.content)
    if request.tools and len(numbers) == 2:
        return Reply(tool_calls=[ToolCall("add", {"a": int(numbers[0]), "b": int(numbers[1])})])
    return None


@pytest.fixture(scope="module")
def fake_subject():
    backend = FakeBackend(arithmetic, context_length=256)
    backend.load()
    yield Subject(backend, [{"type": "function", "function": {"name": "add", "parameters": {}}}])
    backend.close()


@pytest.fixture(scope="module")
def cached_subject(tmp_path_factory):
    from pipeline.backends.cache import with_cache
    from pipeline.core.config import CacheConfig

    backend = with_cache(FakeBackend(arithmetic, context_length=256),
                         CacheConfig(enabled=True, dir=str(tmp_path_factory.mktemp("cache"))))
    backend.load()
    yield Subject(backend, [{"type": "function", "function": {"name": "add", "parameters": {}}}])
    backend.close()
    assert backend.hits > 0 and backend.misses > 0  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def transformers_subject(tmp_path_factory):
    from pipeline.backends.transformers.backend import TransformersBackend
    from tests.helpers.planning import plan_in_process
    from pipeline.stages.resolve import resolve

    dataset = write_jsonl(tmp_path_factory.mktemp("data") / "q.jsonl", [{"id": "q", "prompt": QUESTION}])
    config = make_config(TOOL_MODEL, dataset, session=SessionConfig(tools=[{"_target_": "pipeline.answering.demo_tools.add"}]))
    plan, _, template = plan_in_process(config)
    backend = TransformersBackend(plan, config.session, template)
    backend.load()
    yield Subject(backend, plan.tools)
    backend.close()


@pytest.fixture(scope="module")
def openai_subject(tmp_path_factory):
    from tests.helpers.openai_server import TransformersServe, serving_extra_missing

    if serving_extra_missing():
        pytest.skip(serving_extra_missing())
    from pipeline.answering.tools import load_tools
    from pipeline.backends.openai import OpenAIBackend, OpenAIConfig

    # transformers serve samples only where the model's generation_config.json says do_sample (a temperature
    # above 0 does not turn it on; 0 turns it off), so it serves a copy of the tool model that samples. It sets
    # one global torch seed from each request's `seed` when the request arrives, and generates on one thread:
    # requests in flight together disturb each other's draws, one at a time they do not. So the subject sends
    # one at a time (max_concurrency=1), which is how a user gets reproducible sampling from this server
    # (vLLM and SGLang seed each request on its own, whatever is in flight)
    model = tmp_path_factory.mktemp("sampling") / "tool_model"
    shutil.copytree(TOOL_MODEL, model)
    settings = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**settings, "do_sample": True}))
    server = TransformersServe(model, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        server.wait()
        backend = OpenAIBackend(OpenAIConfig(base_url=server.base_url, tokenizer=str(TOOL_MODEL), max_concurrency=1),
                                server.model)
        backend.load()
        # transformers serve answers a prompt longer than the model's context (it does not check), but refuses
        # fields it does not know (top_k: 422)
        yield Subject(backend, [tool.schema for tool in load_tools([{"_target_": "pipeline.answering.demo_tools.add"}])],
                      failing=ask(SHORT, top_k=5))
        backend.close()
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def subject(request) -> Subject:
    return request.getfixturevalue(f"{request.param}_subject")


def ask(text: str = QUESTION, max_new_tokens: int = 16, **settings: Any) -> Request:
    return Request(messages=[Message("user", text)], max_new_tokens=max_new_tokens, **settings)


def generate(subject: Subject, *requests: Request, sink: Any = None) -> list[Completion]:
    completions = subject.backend.generate(list(requests), sink)
    assert len(completions) == len(requests)
    return completions


class Recorder:
    """A stream sink that keeps what each row was sent."""

    streams_text = True

    def __init__(self) -> None:
        self.pieces: dict[int, list[str]] = {}
        self.complete: dict[int, str] = {}

    def on_text(self, row: int, text: str) -> None:
        self.pieces.setdefault(row, []).append(text)

    def on_complete(self, row: int, text: str) -> None:
        self.complete[row] = text


def test_the_plan_names_the_backend_counts_each_prompt_and_gives_a_reason_for_each_option(subject):
    requests = [ask(), ask(SHORT)]
    plan = subject.backend.plan(requests)
    assert plan.identity.backend == subject.backend.name
    assert plan.capabilities == subject.backend.capabilities
    assert len(plan.prompt_tokens) == 2 and all(count > 0 for count in plan.prompt_tokens)
    assert plan.prompt_tokens[0] > plan.prompt_tokens[1]  # the longer question has more tokens
    assert plan.options and all(option.reason for option in plan.options)


def test_greedy_output_repeats_and_does_not_depend_on_the_batch(subject):
    (alone,) = generate(subject, ask())
    again = generate(subject, ask("What is 1234+5678?"), ask(), ask("What is 9000+1001?"))
    assert not alone.failed and alone.text
    assert again[1].text == alone.text and again[1].completion_tokens == alone.completion_tokens


def test_a_stop_string_ends_the_answer_before_it(subject):
    (full,) = generate(subject, ask())
    stop = full.text[len(full.text) // 2:]
    assert stop, f"the answer {full.text!r} is too short to cut"
    (cut,) = generate(subject, ask(stop=[stop]))
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.finish_reason == "stop" and stop not in cut.text


def test_max_new_tokens_cuts_the_answer_with_finish_reason_length(subject):
    (full,) = generate(subject, ask())
    assert full.finish_reason == "stop" and full.completion_tokens > 2
    (cut,) = generate(subject, ask(max_new_tokens=2))
    assert cut.finish_reason == "length" and cut.completion_tokens == 2
    assert full.text.startswith(cut.text) and len(cut.text) < len(full.text)


def test_token_counts_match_the_backends_own_count_and_the_answer(subject):
    short, longer = ask(SHORT), ask()
    counted = subject.backend.count_tokens([short, longer])
    completions = generate(subject, short, longer)
    assert [c.prompt_tokens for c in completions] == counted and counted[0] < counted[1]
    for completion in completions:
        assert 1 <= completion.completion_tokens <= 16


def test_time_to_first_token_is_positive_and_at_most_the_latency(subject):
    for completion in generate(subject, ask(), ask(SHORT)):
        assert 0 < completion.ttft_s <= completion.latency_s


def test_a_sink_is_told_each_answer(subject):
    sink = Recorder()
    completions = generate(subject, ask(), ask(SHORT), sink=sink)
    assert sink.complete == {0: completions[0].text, 1: completions[1].text}
    if subject.backend.capabilities.streaming:
        assert "".join(sink.pieces[0]).strip() == completions[0].text.strip()


def test_a_tool_round_trip(subject):
    if not subject.backend.capabilities.tools:
        pytest.skip(f"the {subject.backend.name} backend declares no tools")
    (first,) = generate(subject, ask(max_new_tokens=64, tools=subject.tools))
    assert first.finish_reason == "tool" and not first.tool_problems
    assert [(call.name, call.arguments) for call in first.tool_calls] == [("add", {"a": 4821, "b": 3907})]
    said = first.text if first.message_text is None else first.message_text
    history = [Message("user", QUESTION), Message("assistant", said, tool_calls=tuple(first.tool_calls)),
               Message("tool", SUM, name="add")]
    (answer,) = generate(subject, Request(messages=history, max_new_tokens=64, tools=subject.tools))
    assert answer.finish_reason == "stop" and not answer.tool_calls
    assert answer.text.strip() == SUM


def test_seeded_sampling_is_the_same_whatever_the_batch(subject):
    if not subject.backend.capabilities.per_request_seed:
        pytest.skip(f"the {subject.backend.name} backend declares no per-request seeds")
    if "seeds" in subject.unchecked:
        pytest.skip(subject.unchecked["seeds"])
    hot = dict(temperature=1.5, max_new_tokens=12)
    (alone,) = generate(subject, ask(seed=7, **hot))
    together = generate(subject, ask(SHORT, seed=3, **hot), ask(seed=7, **hot), ask(seed=8, **hot))
    assert together[1].text == alone.text
    others = {c.text for c in generate(subject, *[ask(seed=seed, **hot) for seed in range(20, 26)])}
    assert len(others) > 1, "other seeds give other answers: the seed is used"


def test_a_failed_request_is_an_error_completion_and_the_others_are_answered(subject):
    sink = Recorder()
    good, bad, other = generate(subject, ask(), subject.failing or ask(LONG), ask(SHORT), sink=sink)
    assert not good.failed and good.text and not other.failed
    assert bad.failed and bad.finish_reason == "error" and bad.error and "\n" not in bad.error
    assert not bad.text and not bad.tool_calls
    assert sink.complete == {0: good.text, 2: other.text}  # rows keep their place in the batch
