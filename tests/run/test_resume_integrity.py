"""Resume integrity: a resume continues the run it is given, with the files that run read, from any
folder, keeping its work; or it is refused with one line and leaves the run folder (byte for byte)
and its MLflow run as they were.

One run, started with relative paths (dataset.path=data/sums.jsonl, runtime.model=./model) and
stopped by SIGTERM after a few records, is shared by the end-to-end tests of this module, in
order: refusals (each restores what it changed), resume=last beside a newer plan-only run, then a
resume from another folder that finishes it, and a resume of the finished run.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.config import ASSETS_DIR, TrackingConfig
from pipeline.core.errors import UserError
from pipeline.core.transcript import scan
from pipeline.run.runner import run
from tests.conftest import (
    DEMO_DATASET,
    make_config,
    mlflow_client,
    only_run_dir,
    pipeline_env,
    run_pipeline,
    unscored,
    write_jsonl,
)

ARGS = ["dataset.path=data/sums.jsonl", "runtime.model=./model", "runtime.batch_size=1", "tracking.traces=false"]
SAMPLES = 40  # of the demo dataset: at one sample a batch, long enough to stop in the middle


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in a run folder, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mlflow_state(cwd: Path) -> tuple:
    """The one MLflow run under cwd: status, end time, metrics, params and tags."""
    client = mlflow_client(cwd)
    (found,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    return found.info.status, found.info.end_time, found.data.metrics, found.data.params, found.data.tags


def whole_records(folder: Path) -> bytes:
    """The whole records, as execute wrote them (the score stage fills in their scores: conftest.unscored)."""
    _, size = scan(folder / "transcript.jsonl")
    return unscored((folder / "transcript.jsonl").read_bytes()[:size])


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, Path]:
    """(project, run folder): a run of the demo model on a copy of its dataset, stopped by SIGTERM."""
    project = tmp_path_factory.mktemp("project")
    (project / "data").mkdir()
    (project / "data" / "sums.jsonl").write_text("".join(DEMO_DATASET.read_text().splitlines(keepends=True)[:SAMPLES]))
    shutil.copytree(ASSETS_DIR / "demo_model", project / "model")
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *ARGS], cwd=project, env=pipeline_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        transcripts = list((project / "runs").glob("*/*/transcript.jsonl"))
        if transcripts and transcripts[0].read_bytes().count(b"\n") >= 3:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, out + err
    folder = only_run_dir(project)
    assert json.loads((folder / "status.json").read_text())["state"] == "interrupted"
    assert 3 <= len(scan(folder / "transcript.jsonl")[0]) < SAMPLES
    return project, folder


def edit_first_prompt(project: Path, folder: Path) -> bytes:
    path = project / "data" / "sums.jsonl"
    original = path.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["prompt"] = first["prompt"].replace("What is", "Compute")  # same id, another prompt
    path.write_text(json.dumps(first) + "\n" + "".join(lines[1:]))
    return original


def flip_last_weight_byte(project: Path, folder: Path) -> bytes:
    path = project / "model" / "model.safetensors"
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # a tensor's value; the header stays valid
    return original


def edit_chat_template(project: Path, folder: Path) -> bytes:
    path = project / "model" / "chat_template.jinja"
    original = path.read_bytes()
    path.write_bytes(original + b"{# edited #}")
    return original


def other_config_hash(project: Path, folder: Path) -> bytes:
    path = folder / "transcript.jsonl"
    original = path.read_bytes()
    records = [json.loads(line) for line in original.decode().splitlines()]
    path.write_text("".join(json.dumps({**r, "config_hash": "0123456789abcdef"}) + "\n" for r in records))
    return original


REFUSALS = [  # (what, change: returns the changed file's bytes to restore, file, extra args, the one line)
    ("the dataset changed, same ids", edit_first_prompt, "data/sums.jsonl", [],
     r"dataset.path='data/sums.jsonl': the file's content changed since the run started \(/.*/data/sums.jsonl"),
    ("the weights changed", flip_last_weight_byte, "model/model.safetensors", [],
     r"runtime.model='./model': the model's weights changed since the run started"),
    ("the chat template changed", edit_chat_template, "model/chat_template.jinja", [],
     r"runtime.model='./model': the model's tokenizer, chat template or config files changed"),
    ("other settings", None, None, ["generation.temperature=0.7"],
     r"the settings differ from the run's.*generation.temperature: 0.0 in the run, 0.7 now"),
    ("records of another config", other_config_hash, "transcript.jsonl", [],
     r"holds records of another config \(config_hash 0123456789abcdef"),
]


@pytest.mark.slow
@pytest.mark.parametrize("what, change, changed_file, extra, message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_refused_resume_says_what_changed_and_leaves_the_run_as_it_was(interrupted, what, change, changed_file,
                                                                        extra, message):
    project, folder = interrupted
    restore = None
    if change is not None:
        path = folder / changed_file if changed_file == "transcript.jsonl" else project / changed_file
        restore = (path, change(project, folder))
    before, tracked = snapshot(folder), mlflow_state(project)
    try:
        result = run_pipeline([f"resume={folder}", *extra], cwd=project)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr + result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
        assert snapshot(folder) == before, "a refused resume changed the run folder"
        assert mlflow_state(project) == tracked, "a refused resume changed the MLflow run"
    finally:
        if restore:
            restore[0].write_bytes(restore[1])


@pytest.mark.slow
def test_a_refused_resume_for_a_missing_dataset_leaves_the_run_as_it_was(interrupted):
    project, folder = interrupted
    before, tracked = snapshot(folder), mlflow_state(project)
    dataset = project / "data" / "sums.jsonl"
    dataset.rename(dataset.with_suffix(".moved"))
    try:
        result = run_pipeline([f"resume={folder}"], cwd=project)
    finally:
        dataset.with_suffix(".moved").rename(dataset)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(r"dataset.path='data/sums.jsonl': file not found", result.stderr), result.stderr
    assert snapshot(folder) == before and mlflow_state(project) == tracked
    assert json.loads((folder / "status.json").read_text())["state"] == "interrupted"


@pytest.mark.slow
def test_resume_last_takes_the_newest_unfinished_run_over_a_newer_plan_only_run(interrupted):
    project, folder = interrupted
    time.sleep(1.1)  # run folders are named to the second
    dry = run_pipeline([*ARGS, "pipeline.until=plan"], cwd=project)
    assert dry.returncode == 0, dry.stderr[-2000:]
    before = snapshot(folder)
    # other settings make the resume stop before it does anything, naming the folder it took
    result = run_pipeline(["resume=last", "generation.temperature=0.7"], cwd=project)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"resume={folder}: the settings differ" in result.stderr, result.stderr
    assert snapshot(folder) == before


@pytest.mark.slow
def test_a_resume_from_another_folder_keeps_the_work_and_a_finished_run_is_left_alone(interrupted, tmp_path):
    """Relative paths are the launch folder's (the dataset, the model, runs/mlflow.db); the records
    found keep their bytes and only the missing ones are generated. A resume of the finished run
    does nothing, says so and changes nothing."""
    project, folder = interrupted
    found = whole_records(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_pipeline([f"resume={folder}"], cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((folder / "status.json").read_text())["state"] == "success"
    assert not (elsewhere / "runs").exists(), "the resume wrote into the folder it was started from"
    records = scan(folder / "transcript.jsonl")[0]
    expected = [json.loads(line)["id"] for line in (project / "data" / "sums.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in records] == expected
    assert whole_records(folder).startswith(found), "records kept from before changed (generated again?)"
    (generated, kept), = re.findall(r"execute: (\d+) records written in \d+ batches; (\d+) answer\(s\) kept",
                                    (folder / "run.log").read_text())
    assert (int(generated), int(kept)) == (SAMPLES - found.count(b"\n"), found.count(b"\n"))
    status, _, metrics, _, tags = mlflow_state(project)
    assert status == "FINISHED" and metrics["samples"] == SAMPLES and tags["run_dir"] == str(folder)

    before, tracked = snapshot(folder), mlflow_state(project)
    again = run_pipeline([f"resume={folder}"], cwd=elsewhere)
    assert again.returncode == 0 and f"nothing to resume: {folder} has completed" in again.stdout, again.stderr
    after = snapshot(folder)
    for name in ("status.json", "config.json", "inputs.json", "plan.json", "summary.json", "transcript.jsonl"):
        assert after[name] == before[name], f"a resume of a finished run changed {name}"
    assert mlflow_state(project) == tracked


@pytest.mark.parametrize("change", ["edit", "remove"])
def test_the_runner_refuses_a_resume_with_other_inputs_before_writing_anything(tmp_path, tiny_model, change):
    """The in-run check (what a sweep's jobs rely on: the command-line check does not look into
    them): a dataset edited or gone since the run started stops the resume, which writes nothing."""
    dataset = write_jsonl(tmp_path / "small.jsonl", [
        {"id": f"s{i}", "prompt": f"What is {10 + i}+{20 + i}?", "reference": str(30 + 2 * i)} for i in range(5)])
    config = make_config(tiny_model, dataset, tracking=TrackingConfig(enabled=False))
    run_dir = tmp_path / "run"
    run(config, run_dir)
    transcript = run_dir / "transcript.jsonl"
    transcript.write_text("".join(transcript.read_text().splitlines(keepends=True)[:2]))  # as a kill leaves it
    (run_dir / "status.json").write_text(json.dumps({"state": "interrupted", "reason": "stopped by SIGTERM"}))
    if change == "edit":
        dataset.write_text(dataset.read_text().replace("What is 10+20?", "What is 20+10?"))
    else:
        dataset.unlink()
    before = snapshot(run_dir)
    expected = r"dataset.path=.*: the file's content changed" if change == "edit" else r"dataset.path=.*file not found"
    with pytest.raises(UserError, match=expected):
        run(replace(config, resume=str(run_dir)), run_dir)
    assert snapshot(run_dir) == before
