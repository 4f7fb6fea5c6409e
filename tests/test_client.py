"""The Python API (RuntimeClient, ChatSession) and the terminal chat, driven through a pseudo-terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pipeline_env, read_until, terminal_chat

from pipeline.client import RuntimeClient
from pipeline.core.errors import UserError
from pipeline.session import ChatSession


@pytest.fixture(scope="module")
def client() -> RuntimeClient:
    return RuntimeClient.from_overrides(["runtime.model=demo", "runtime.device=cpu"])


def test_the_readme_example_runs(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
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
    from tiny_media_models import png

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


def test_the_python_api_says_plainly_that_a_served_model_is_not_supported_yet():
    with pytest.raises(UserError, match=r"^backend=openai: the Python API and python -m pipeline.chat run the model in"):
        RuntimeClient.from_overrides(["backend=openai", "runtime.model=served"])
