"""A run survives a server that answers badly: `python -m pipeline backend=openai` against a stub that answers some
questions with what the API does not promise (tests/helpers/bad_server.py, no model). Each bad answer is that
request's error record, naming the server and what was wrong; the good answers are scored in summary.json; nothing
prints a traceback; execute.fail_fast=true stops at the first one in one line, exit 1. On the chat path (streamed
and whole), the /v1/completions parts of continue_on_length, and the echoed log-probabilities of multiple choice.
At plan time a garbled model list or log-probability probe is refused in one line, exit 2, nothing created."""

from __future__ import annotations

import json

import pytest

from pipeline.core.config import ASSETS_DIR
from pipeline.core.transcript import read_transcript
from tests.conftest import only_run_dir, run_main, run_pipeline
from tests.helpers.bad_server import MODEL, BadServer

pytestmark = pytest.mark.slow
SECRET = "sk-bad-answers-5c2e81"

# the first questions of the addition datasets (addition.jsonl and addition_choice.jsonl share them)
Q = ["What is 86+87?", "What is 45+15?", "What is 78+99?", "What is 91+12?", "What is 48+35?", "What is 13+71?",
     "What is 33+61?", "What is 97+89?"]


def through(server: BadServer, *more: str) -> list[str]:
    return ["backend=openai", f"backend.base_url={server.base_url}", f"runtime.model={MODEL}", "tracking=none", *more]


def outcome(result, cwd):
    """The run's records by sample id and its summary, after checking it ended well and printed no traceback."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    folder = only_run_dir(cwd)
    records = {r["sample_id"]: r for r in read_transcript(folder / "transcript.jsonl")}
    return records, json.loads((folder / "summary.json").read_text())


def check_errors(records, server: BadServer, route: str, defects: dict[str, str]) -> None:
    """Exactly the samples in `defects` are error records, each naming the server, the request and its defect (or
    the server's own error)."""
    failed = {sample: r["error"] for sample, r in records.items() if r["status"] == "error"}
    assert failed.keys() == defects.keys(), failed
    for sample, defect in defects.items():
        said = defect if defect.startswith("reported") else f"answered {route} with {defect}"
        assert f"the server at {server.base_url} {said}" in failed[sample], failed[sample]


CHAT_MODES = {Q[0]: "wrong_type", Q[1]: "not_json", Q[2]: "empty_choices", Q[3]: "whole", Q[4]: "text_plain",
              Q[5]: "missing_field", Q[6]: "error_object"}
CHAT_DEFECTS = {"add-000": "a delta whose content is 173 (a number), not text",
                "add-001": "a streamed chunk that is not JSON: '{\"choices\": [{\"delta\": {\"content\": \"60'",
                "add-002": 'a stream without any choice (each chunk had "choices": [] or none)',
                "add-004": "a text/plain body, not an event stream: 'upstream busy, try again later (Bearer ***)'",
                "add-005": "a chat completion whose choice has no message",
                "add-006": "reported an error: model overloaded"}


def test_bad_chat_answers_are_error_records_and_the_good_ones_are_scored(tmp_path):
    with BadServer(CHAT_MODES) as server:
        result = run_pipeline(through(server, "dataset.limit=8", "backend.max_concurrency=3"), tmp_path,
                              env={"OPENAI_API_KEY": SECRET})
    records, summary = outcome(result, tmp_path)
    assert SECRET not in result.stderr + json.dumps(records)  # a bad answer that repeats the key is masked
    check_errors(records, server, "POST /chat/completions", CHAT_DEFECTS)
    right = {sample for sample, r in records.items() if r["score"] == 1.0}
    assert right == {"add-003", "add-007"}  # a whole answer (add-003) and a streamed one
    assert (summary["num_samples"], summary["num_errors"], summary["correct"]) == (8, 6, 2)


def test_with_fail_fast_the_first_bad_answer_stops_the_run_in_one_line(tmp_path):
    with BadServer({Q[2]: "empty_choices"}) as server:
        result = run_pipeline(through(server, "dataset.limit=4", "execute.fail_fast=true",
                                      "backend.max_concurrency=1"), tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    [line] = [line for line in result.stderr.splitlines() if "could not answer" in line]
    assert line.startswith("run failed: sample 'add-002': the openai backend could not answer: ")
    assert (f"the server at {server.base_url} answered POST /chat/completions with a stream without any choice"
            in line and "(execute.fail_fast=true)" in line)
    records = read_transcript(only_run_dir(tmp_path) / "transcript.jsonl")
    assert [r["sample_id"] for r in records] == ["add-000", "add-001"]  # the answers before it are kept


def test_bad_completions_in_parts_are_error_records(tmp_path):
    # continue_on_length sends the prompt, rendered here with backend.tokenizer's template, to /v1/completions
    modes = {Q[0]: "wrong_type", Q[1]: "not_json", Q[2]: "empty_choices", Q[3]: "text_plain", Q[4]: "missing_field"}
    with BadServer(modes) as server:
        result = run_pipeline(through(server, "dataset.limit=6", "generation.continue_on_length=1",
                                      f"backend.tokenizer={ASSETS_DIR / 'demo_model'}"), tmp_path)
    records, summary = outcome(result, tmp_path)
    check_errors(records, server, "POST /completions", {
        "add-000": "a completion whose text is 173 (a number), not text",
        "add-001": "an application/json body that is not JSON: '{\"choices\": [{\"text\":'",
        "add-002": 'a completion with "choices": [] (no answer)',
        "add-003": "a text/plain body that is not JSON: 'upstream busy, try again later'",
        "add-004": "a completion whose choice has no text"})
    assert records["add-005"]["response"] == "84" and summary["correct"] == 1


def test_bad_echoed_log_probabilities_are_error_records_and_the_good_choices_are_scored(tmp_path):
    modes = {Q[0]: "wrong_type", Q[1]: "missing_field", Q[2]: "empty_choices", Q[3]: "text_plain"}
    with BadServer(modes) as server:
        result = run_pipeline(through(server, "dataset=addition_choice", "dataset.limit=6", "session.chat_template=false",
                                      "dataset.target_delimiter=' '"), tmp_path)
    records, summary = outcome(result, tmp_path)
    check_errors(records, server, "POST /completions", {
        "mc-000": "logprobs with a token_logprobs entry that is not a number",
        "mc-001": "a completion without logprobs",
        "mc-002": 'a completion with "choices": [] (no answer)',
        "mc-003": "a text/plain body that is not JSON: 'upstream busy, try again later'"})
    assert all(records[sample]["score"] == 1.0 for sample in ("mc-004", "mc-005"))
    assert (summary["num_errors"], summary["correct"]) == (4, 2)


@pytest.mark.parametrize("everything, said", [
    ({"models": "text_plain"}, "is not OpenAI-compatible: GET /models answered text/plain, not a model list "
                               "(upstream busy, try again later)"),
    ({"models": "wrong_type"}, "is not OpenAI-compatible: GET /models answered application/json, not a model list"),
    ({"echo": "text_plain"}, "does not return them (it answered POST /completions with a text/plain body that is not "
                             "JSON: 'upstream busy, try again later')"),
    ({"echo": "wrong_type"}, "does not return them (it answered POST /completions with logprobs with a token_logprobs "
                             "entry that is not a number)"),
])
def test_a_garbled_answer_to_the_plan_is_one_line_and_nothing_is_created(everything, said, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    with BadServer(everything=everything) as server:
        code, err = run_main(through(server, "dataset=addition_choice", "dataset.limit=2", "session.chat_template=false",
                                     "dataset.target_delimiter=' '"), monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"the server at {server.base_url} " in line and said in line
    assert not (tmp_path / "runs").exists()
