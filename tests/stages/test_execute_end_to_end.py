"""Execute through `python -m pipeline`: scripted conversations with autosave and reload, sampling
that gives each sample the same output whatever the batch size, and the progress line on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import pytest

from tests.conftest import pipeline_env, run_pipeline, write_jsonl

pytestmark = pytest.mark.slow


def transcript(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]


def test_a_scripted_conversation_is_saved_and_can_be_continued(tmp_path):
    dataset = write_jsonl(tmp_path / "talk.jsonl", [
        {"id": "sums", "turns": [{"content": "What is 12+30?", "reference": "42"},
                                 {"content": "What is 25+25?", "reference": "50"}]}])
    result = run_pipeline([f"dataset.path={dataset}", "session.autosave=true", "tracking=none",
                           "hydra.run.dir=runs/talk"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = transcript(tmp_path / "runs" / "talk")
    assert [(r["sample_id"], r["conversation_id"], r["turn"]) for r in records] == [("sums#0", "sums", 0),
                                                                                   ("sums#1", "sums", 1)]
    assert records[1]["messages"][1] == {"role": "assistant", "content": records[0]["response"]}
    assert all(r["ttft_s"] > 0 for r in records)
    saved = tmp_path / "runs" / "talk" / "conversations" / "sums.json"
    assert len(json.loads(saved.read_text())) == 4

    follow_up = write_jsonl(tmp_path / "next.jsonl", [{"id": "next", "prompt": "What is 11+11?", "reference": "22"}])
    again = run_pipeline([f"dataset.path={follow_up}", f"session.history={saved}", "tracking=none",
                          "hydra.run.dir=runs/next"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (record,) = transcript(tmp_path / "runs" / "next")
    assert record["messages"][:4] == json.loads(saved.read_text())


def test_sampled_outputs_are_the_same_whatever_the_batch_size(tmp_path):
    common = ["generation=sampling", "generation.temperature=1.5", "generation.seed=5", "dataset.limit=24",
              "tracking=none"]
    outputs = {}
    for batch in (1, 7, 24):
        result = run_pipeline(common + [f"runtime.batch_size={batch}", f"hydra.run.dir=runs/b{batch}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs[batch] = {r["sample_id"]: r["response"] for r in transcript(tmp_path / "runs" / f"b{batch}")}
    assert outputs[1] == outputs[7] == outputs[24]
    assert len(outputs[1]) == 24


def test_a_bad_turn_names_the_line(tmp_path):
    dataset = write_jsonl(tmp_path / "bad.jsonl", [{"id": "t", "turns": ["ok", 3]}])
    result = run_pipeline([f"dataset.path={dataset}", "tracking=none"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        f'error: {dataset}:1: turns[1] must be a non-empty string or {{"content": a string, "reference": optional}}'


def on_a_terminal(args: list[str], cwd) -> tuple[int, str]:
    """`python -m pipeline ARGS` with its stdout and stderr on a pseudo-terminal: (exit code, all it printed)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=pipeline_env(),
                               stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    return process.wait(timeout=300), seen.decode(errors="replace")


def test_a_resumed_run_counts_only_the_answers_left_and_log_lines_never_run_into_the_progress_line(tmp_path):
    first = run_pipeline(["dataset.limit=6", "runtime.batch_size=2", "pipeline.until=execute", "tracking=none",
                          "hydra.run.dir=runs/r"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "r"
    lines = (run_dir / "transcript.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "transcript.jsonl").write_text("".join(lines[:2]))  # as if stopped after its first batch
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))

    code, shown = on_a_terminal([f"resume={run_dir}"], tmp_path)
    assert code == 0, shown
    progress = re.findall(r"\rexecute   \d+ generations, [\d.]+/s \(([^)]*)\)(.?)", shown)
    assert progress, shown  # the first completion is shown at once
    assert {text for text, _ in progress} == {"4 answers to give; 2 kept from before"}
    assert {after for _, after in progress} == {"\r"}, shown  # cleared (or redrawn) before anything else prints
    assert re.search(r"\r\033\[Kexecute: ", shown), shown  # execute's log lines come after a cleared progress line
    assert len(transcript(run_dir)) == 6
