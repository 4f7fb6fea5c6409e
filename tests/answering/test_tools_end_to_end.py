"""Tools through the real entry point: the shipped experiment shows the calculator tool changing
accuracy, and a tool that cannot be imported is refused before any weight loads."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from pipeline.client import RuntimeClient
from pipeline.session import ChatSession
from tests.conftest import read_until, run_pipeline, terminal_chat

pytestmark = pytest.mark.slow


# the turn's seconds are wall time: on a loaded machine the default 30 s can run out before a tool call,
# which is right but not what these tests are about
UNHURRIED = "session.tool_budget.seconds_per_turn=600"


def write_user_tool(folder, module: str, body: str, api_key: bool = False) -> None:
    """A user's own module `<module>.py` in `folder` with an `add(a, b)` tool whose body is `body`."""
    key_param = ', api_key: str = ""' if api_key else ""
    key_doc = "\n        api_key: The service key." if api_key else ""
    (folder / f"{module}.py").write_text(
        f"def add(a: int, b: int{key_param}) -> int:\n"
        f'    """Add two integers.\n\n    Args:\n        a: The first number.\n        b: The second number.{key_doc}\n    """\n'
        + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n")


def test_the_tools_experiment_shows_the_tool_changing_accuracy(tmp_path):
    result = run_pipeline(["+experiment=tools", "tracking=none", "hydra.sweep.dir=runs/tools", "dataset.limit=40",
                           UNHURRIED], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = {}
    for job in (tmp_path / "runs" / "tools").iterdir():
        if (job / "summary.json").is_file():
            session = json.loads((job / "config.json").read_text())["session"]["name"]
            summaries[session] = json.loads((job / "summary.json").read_text())
    assert set(summaries) == {"default", "calculator_tools"}
    with_tools, without = summaries["calculator_tools"], summaries["default"]
    assert with_tools["num_samples"] == without["num_samples"] == 40
    assert with_tools["accuracy"] >= 0.95 and without["accuracy"] <= 0.2
    assert with_tools["tool_calls"] >= 40 and without["tool_calls"] == 0
    assert "session=calculator_tools" in result.stdout and "tools     40 calls, 0 failed" in result.stdout


def test_a_tool_that_does_not_import_is_a_config_error(tmp_path):
    result = run_pipeline(["runtime.model=tool-demo", "dataset=tool_addition", "session=calculator_tools",
                           "session.tools=[{_target_: mytools.nothing}]", "tracking=none"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: session.tools[0]._target_=mytools.nothing: cannot import mytools")
    assert "Traceback" not in result.stderr


def test_a_tool_from_the_users_own_module_is_called(tmp_path):
    write_user_tool(tmp_path, "mytools", """
        with open("calls.log", "a") as log:
            log.write(f"{a}+{b}\\n")
        return a + b""")
    result = run_pipeline(["runtime.model=tool-demo", "dataset=tool_addition", "dataset.limit=5",
                           "session=calculator_tools", "session.tools=[{_target_: mytools.add}]",
                           "generation.max_new_tokens=64", "tracking=none", "hydra.run.dir=runs/mine"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 5
    assert "accuracy  1.000 [0.566, 1.000] 95% CI (Wilson, 5 samples); 5/5 exact_match" in result.stdout


def test_the_client_and_a_chat_session_use_tools(tmp_path):
    client = RuntimeClient.from_overrides(["runtime.model=tool-demo", "session=calculator_tools",
                                           "generation.max_new_tokens=64", "runtime.device=cpu"])
    assert [t["function"]["name"] for t in client.describe_plan()["tools"]] == ["add"]
    response = client.prompt("What is 4821+3907?")
    assert response.text == "8728"
    assert [m.role for m in response.messages] == ["assistant", "tool", "assistant"]
    assert [r.kind for r in response.records] == ["tool_call", "tool_result", "answer"]
    chat = client.session(autosave_path=tmp_path / "chat.json")
    assert chat.send("What is 1000+2345?").text == "3345"
    assert chat.retry().text == "3345"
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert [m["role"] for m in saved] == ["user", "assistant", "tool", "assistant"]
    assert saved[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 1000, "b": 2345}}
    again = ChatSession.load(client, tmp_path / "chat.json")
    assert again.messages[1].tool_calls[0].name == "add"


def test_the_terminal_chat_shows_each_tool_call_and_its_result(tmp_path):
    with terminal_chat(["runtime.model=tool-demo", "session=calculator_tools",
                        "generation.max_new_tokens=64", "runtime.device=cpu"], tmp_path) as (process, controller):
        read_until(controller, "you> ")
        os.write(controller, b"What is 4821+3907?\n")
        first = read_until(controller, "you> ")
        assert "(tool add(a=4821, b=3907) -> 8728)\r\nmodel> 8728" in first
        os.write(controller, b"What is 1000+2345?\n")  # a second question, after the first exchange
        assert "(tool add(a=1000, b=2345) -> 3345)\r\nmodel> 3345" in read_until(controller, "you> ")
        os.write(controller, b"/exit\n")
        assert process.wait(timeout=60) == 0
    (run_dir,) = (tmp_path / "runs").glob("*/*_chat-*")
    records = [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]
    assert [(r["sample_id"], r["kind"]) for r in records] == [
        ("chat#0", "tool_call"), ("chat#0", "tool_result"), ("chat#0", "answer"),
        ("chat#1", "tool_call"), ("chat#1", "tool_result"), ("chat#1", "answer")]
    saved = json.loads((run_dir / "conversation.json").read_text())
    assert [m["role"] for m in saved] == ["user", "assistant", "tool", "assistant"] * 2


def test_fail_fast_turns_a_tool_error_into_a_failed_run(tmp_path):
    write_user_tool(tmp_path, "broken", 'raise ConnectionError("the calculator service is down")')
    common = ["runtime.model=tool-demo", "dataset=tool_addition", "dataset.limit=3", "session=calculator_tools",
              "session.tools=[{_target_: broken.add}]", "generation.max_new_tokens=64", "tracking=none", UNHURRIED]
    going_on = run_pipeline(common + ["hydra.run.dir=runs/on"], cwd=tmp_path)
    assert going_on.returncode == 0, going_on.stderr
    assert "tools     " in going_on.stdout and "failed (tool_error in the transcript)" in going_on.stdout
    stopped = run_pipeline(common + ["execute.fail_fast=true", "hydra.run.dir=runs/stop"], cwd=tmp_path)
    assert stopped.returncode == 1
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("run failed: sample 'tool-") and "add failed: ConnectionError: the calculator service " \
        "is down (execute.fail_fast=true stops at the first tool error)" in last
    assert json.loads((tmp_path / "runs" / "stop" / "status.json").read_text())["state"] == "failed"
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "runs" / "stop" / "transcript.jsonl").open()]
    assert kinds[-1] == "tool_error"


def test_a_key_bound_to_a_tool_reaches_the_tool_and_nothing_else(tmp_path):
    write_user_tool(tmp_path, "keyed", """
        if api_key != "sk-live-SECRET123":
            raise PermissionError("wrong key")
        return a + b""", api_key=True)
    result = run_pipeline(["runtime.model=tool-demo", "dataset=tool_addition", "dataset.limit=2",
                           "session=calculator_tools", "session.tools=[{_target_: keyed.add, api_key: sk-live-SECRET123}]",
                           "generation.max_new_tokens=64", "hydra.run.dir=runs/keyed"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tools     2 calls, 0 failed" in result.stdout  # the tool got the real key
    assert "SECRET123" not in result.stdout and "SECRET123" not in result.stderr
    plan = json.loads((tmp_path / "runs" / "keyed" / "plan.json").read_text())
    assert "api_key" not in plan["tools"][0]["function"]["parameters"]["properties"]  # bound, not shown to the model
    leaked = [path for path in (tmp_path / "runs").rglob("*") if path.is_file() and b"SECRET123" in path.read_bytes()]
    assert leaked == []  # MLflow's store, its artifacts, config.json, log, transcript, Hydra's own copies in .hydra/
    assert "api_key: ***}" in (tmp_path / "runs" / "keyed" / ".hydra" / "overrides.yaml").read_text()
