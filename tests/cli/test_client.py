"""The Python API (RuntimeClient, ChatSession) and the terminal chat, driven through a pseudo-terminal."""

from __future__ import annotations

import ast
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.client import RuntimeClient
from pipeline.core.errors import UserError
from pipeline.session import ChatSession
from tests.conftest import pipeline_env, read_until, terminal_chat


@pytest.fixture(scope="module")
def client() -> RuntimeClient:
    return RuntimeClient.from_overrides(["runtime.model=demo", "runtime.device=cpu"])


def test_the_readme_example_runs(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) <= 6
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=pipeline_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42", "50"]


def test_the_client_plans_loads_once_and_answers(client):
    assert client.describe_plan()["model"]["alias"] == "demo"
    first = client.prompt("What is 12+30?")
    runtime = client.load()
    second = client.prompt("What is 40+17?")
    assert client.load() is runtime  # reused, not reloaded
    assert (first.text, second.text) == ("42", "57")
    assert first.finish_reason == "stop" and 0 < first.ttft_s <= first.latency_s and first.prompt_tokens > 10


def test_images_are_refused_by_a_text_model(client, tmp_path):
    from tests.helpers.tiny_media_models import png

    with pytest.raises(UserError, match=r"takes text only, not image"):
        client.prompt("What is this?", images=[str(png(tmp_path / "cat.png", 1))])
    with pytest.raises(UserError, match=r"images\[0\]: image 'cat.png' does not exist"):
        client.prompt("What is this?", images=["cat.png"])


def test_a_session_remembers_retries_clears_and_autosaves(client, tmp_path):
    path = tmp_path / "chat.json"
    chat = client.session(system_prompt="Answer with the number only.", autosave_path=path)
    assert chat.send("What is 21+21?").text == "42"
    chat.send("What is 10+10?")
    saved = json.loads(path.read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert saved[2]["content"] == "42"
    retried = chat.retry()
    assert len(chat.messages) == 4 and chat.messages[-1].content == retried.text
    again = ChatSession.load(client, path)
    assert again.system_prompt == "Answer with the number only." and len(again.messages) == 4
    chat.clear()
    assert json.loads(path.read_text()) == [{"role": "system", "content": "Answer with the number only."}]
    with pytest.raises(ValueError, match="nothing to retry"):
        chat.retry()


def test_a_conversation_longer_than_the_context_is_refused_with_the_fix(client):
    with pytest.raises(UserError, match=r"^sample 'prompt-\d+': \d{3} prompt tokens \+ generation.max_new_tokens=8 "
                                        "does not fit the model's context of 256 tokens; clear the conversation"):
        client.prompt("1" * 300)


@pytest.mark.slow
def test_the_terminal_chat_streams_answers_and_obeys_slash_commands(tmp_path):
    with terminal_chat(["runtime.device=cpu"], tmp_path) as (process, controller):
        read_until(controller, "you> ")
        os.write(controller, b"What is 12+30?\n")
        assert "model> 42" in read_until(controller, "you> ")
        os.write(controller, b"/system Answer with the number only.\n")
        assert "system prompt set" in read_until(controller, "you> ")
        os.write(controller, b"/retry\n")
        assert "model> 42" in read_until(controller, "you> ")
        os.write(controller, b"/bogus\n")
        assert "unknown command /bogus" in read_until(controller, "you> ")
        os.write(controller, b"/save saved.json\n")
        assert "saved to saved.json" in read_until(controller, "you> ")
        os.write(controller, b"/clear\n")
        read_until(controller, "you> ")
        os.write(controller, b"/exit\n")
        assert process.wait(timeout=60) == 0
    (run_dir,) = (tmp_path / "runs").glob("*/*_chat-*")
    records = [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]
    assert [r["response"] for r in records] == ["42", "42"]
    assert records[1]["messages"][0] == {"role": "system", "content": "Answer with the number only."}
    assert json.loads((tmp_path / "saved.json").read_text())[-1] == {"role": "assistant", "content": "42"}
    assert json.loads((run_dir / "conversation.json").read_text()) == [
        {"role": "system", "content": "Answer with the number only."}]


def test_the_client_works_on_a_copy_of_the_config_it_is_given(tmp_path):
    from hydra import compose, initialize_config_dir

    from pipeline.core.config import CONF_DIR, to_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = to_config(compose(config_name="config", overrides=["runtime.model=demo", "runtime.batch_size=8"]))
    before = copy.deepcopy(config)
    client = RuntimeClient(config)
    assert client.plan().batch_size == 1  # prompts go one at a time ...
    assert config == before and config.runtime.batch_size == 8  # ... without touching the caller's config
    assert client.config is not config


def test_the_client_and_the_session_modules_do_not_import_each_other():
    root = Path(__file__).resolve().parents[2] / "pipeline"

    def imported(module: str) -> set[str]:
        tree = ast.parse((root / module).read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}

    assert not {name for name in imported("client.py") if name.startswith("pipeline.session")}
    assert ChatSession.__module__ == "pipeline.client"  # pipeline.session only passes it on


# --- backend=openai: the same client and chat through a server ----------------------------------------------


class Collect:
    streams_text = True

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.completed: list[str] = []

    def on_text(self, row: int, text: str) -> None:
        self.pieces.append(text)

    def on_complete(self, row: int, text: str) -> None:
        self.completed.append(text)


def served_overrides(served) -> list[str]:
    return ["backend=openai", f"backend.base_url={served.base_url}", f"runtime.model={served.model}"]


@pytest.mark.slow
def test_the_client_answers_through_a_server_streaming_as_in_process(served, client, tmp_path):
    with RuntimeClient.from_overrides(served_overrides(served)) as remote:
        plan = remote.describe_plan()
        assert plan["backend"] == "openai" and plan["device"] == "server"
        assert remote.load() is None  # nothing loads here: the server was asked it still serves the model
        sink = Collect()
        answer = remote.prompt("What is 12+30?", sink=sink)
        assert answer.text == client.prompt("What is 12+30?").text == "42"  # greedy: as the in-process model
        assert "".join(sink.pieces) == "42" and sink.completed == ["42"]  # streamed as it came
        assert answer.finish_reason == "stop" and 0 < answer.ttft_s <= answer.latency_s and answer.prompt_tokens > 10
        assert [r.kind for r in answer.records] == ["answer"] and answer.records[0].status == "ok"

        chat = remote.session(system_prompt="Answer with the number only.", autosave_path=tmp_path / "chat.json")
        assert chat.send("What is 21+21?").text == "42"
        assert chat.send("What is 10+10?").text == "20"
        assert chat.retry().text == "20"
        saved = json.loads((tmp_path / "chat.json").read_text())
        assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
        from PIL import Image

        Image.new("RGB", (8, 8), "white").save(tmp_path / "cat.png")  # a real image: refused for the model, not the file
        with pytest.raises(UserError, match=r"backend.modalities=\[.text.\]; add image there"):
            remote.prompt("What is this?", images=[str(tmp_path / "cat.png")])


@pytest.mark.slow
def test_the_terminal_chat_talks_to_a_server_and_streams_its_answers(served, tmp_path):
    with terminal_chat(served_overrides(served), tmp_path) as (process, controller):
        read_until(controller, "you> ")
        os.write(controller, b"What is 12+30?\n")
        assert "model> 42" in read_until(controller, "you> ")
        os.write(controller, b"/retry\n")
        assert "model> 42" in read_until(controller, "you> ")
        os.write(controller, b"/exit\n")
        assert process.wait(timeout=60) == 0
        assert f"talking to {served.model} at {served.base_url}" in process.stderr.read().decode()
    (run_dir,) = (tmp_path / "runs").glob("*/*_chat-*")
    records = [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]
    assert [(r["response"], r["status"], r["turn"]) for r in records] == [("42", "ok", 0), ("42", "ok", 1)]
    assert json.loads((run_dir / "plan.json").read_text())["backend"] == "openai"


@pytest.mark.slow
def test_the_chat_says_when_the_server_is_gone_and_keeps_the_conversation(served, tmp_path):
    from pipeline.cli.chat import chat
    from tests.helpers.openai_server import FaultProxy

    proxy = FaultProxy(served.port).__enter__()  # the server as the chat sees it, until the proxy is closed

    class Typed:
        """The user's lines; the server goes away before the second question."""

        def __init__(self) -> None:
            self.lines = ["What is 12+30?\n", "What is 40+17?\n", "/exit\n"]

        def readline(self) -> str:
            if len(self.lines) == 2:
                proxy.__exit__(None, None, None)
            return self.lines.pop(0)

    client = RuntimeClient.from_overrides(["backend=openai", f"backend.base_url={proxy.base_url}",
                                           f"runtime.model={served.model}", "backend.max_retries=0"])
    try:
        client.load()
        out = io.StringIO()
        assert chat(client, tmp_path, Typed(), out) == 1
    finally:
        client.close()
    said = out.getvalue()
    assert "model> 42" in said
    assert (f"(error: the server at {proxy.base_url} stopped answering: connection to the server failed: connection "
            "refused (1 request(s) of the last batch unanswered); nothing was added to the conversation)") in said
    assert said.rstrip().endswith("you>")  # the chat went on to the next line
    assert [m["content"] for m in json.loads((tmp_path / "conversation.json").read_text())] == ["What is 12+30?", "42"]
