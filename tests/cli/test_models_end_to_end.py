"""Resolve and plan through the real entry points: every kind of model reference, the plan JSON,
`python -m pipeline.models`, and failures met at load time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    mlflow_client,
    only_run_dir,
    pipeline_env,
    run_pipeline,
    write_jsonl,
)
from tests.helpers.hf_cache import add_snapshot
from tests.helpers.tiny_model import overlap_two_tensors

pytestmark = pytest.mark.slow
COMMIT = "c0ffee" + "0" * 34


@pytest.fixture
def hf_cache(tmp_path, tiny_model) -> Path:
    """A Hugging Face cache holding the tiny model as org/tiny (main) with a tag v1."""
    cache = tmp_path / "hf" / "hub"
    add_snapshot(cache, "org/tiny", COMMIT, {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()},
                 refs=("main", "v1"))
    return cache


def test_until_plan_prints_the_whole_plan_without_importing_torch(tmp_path):
    # printed by an atexit handler: python -m pipeline ends with os._exit after running those
    code = ("import atexit, sys, runpy; sys.argv = ['pipeline', 'pipeline.until=plan', 'tracking=none']\n"
            "atexit.register(lambda: print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules, "
            "file=sys.stderr))\n"
            "runpy.run_module('pipeline', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=pipeline_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "IMPORTED False False" in result.stderr
    plan = json.loads(result.stdout)
    assert plan["model"]["alias"] == "demo" and plan["model"]["weights_digest"].startswith("sha256:")
    assert plan["memory"]["fits"] and plan["memory"]["weights_bytes"] == plan["model"]["parameters"] * 4
    assert plan["generation_sources"]["temperature"] == "config" and plan["reasons"]["device"].startswith("auto")


def test_the_same_command_plans_the_same_twice(tmp_path):
    args = ["pipeline.until=plan", "tracking=none", "runtime.memory_limit=2GiB", "runtime.batch_size=auto"]
    plans = []
    for run in ("a", "b"):
        result = run_pipeline(args + [f"hydra.run.dir=runs/{run}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        plans.append(json.loads((tmp_path / "runs" / run / "plan.json").read_text()))
    assert plans[0] == plans[1] and plans[0]["batch_size"] == 64


def test_a_repo_id_in_the_hugging_face_cache_runs(tmp_path, hf_cache, small_dataset):
    result = run_pipeline(["runtime.model=org/tiny@v1", f"dataset.path={small_dataset}", "tracking=none",
                           "hydra.run.dir=runs/hf"], cwd=tmp_path, env={"HF_HUB_CACHE": str(hf_cache)})
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "runs" / "hf" / "plan.json").read_text())
    model = plan["model"]
    assert (model["kind"], model["repo_id"], model["revision"], model["commit"]) == ("hf-cache", "org/tiny", "v1", COMMIT)
    assert model["path"] == str((hf_cache / "models--org--tiny" / "snapshots" / COMMIT).resolve())
    assert len((tmp_path / "runs" / "hf" / "transcript.jsonl").read_text().splitlines()) == 5


def test_a_repo_id_that_is_not_cached_says_how_to_get_it(tmp_path, hf_cache):
    result = run_pipeline(["runtime.model=org/absent"], cwd=tmp_path, env={"HF_HUB_CACHE": str(hf_cache)}, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: runtime.model='org/absent': org/absent is not in the Hugging Face cache")
    assert "hf download org/absent" in line and "runtime.allow_download=true" in line
    offline = run_pipeline(["runtime.model=org/absent", "runtime.allow_download=true"], cwd=tmp_path,
                           env={"HF_HUB_CACHE": str(hf_cache)}, timeout=60)
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    offline_line = offline.stderr.strip().splitlines()[-1]
    assert offline_line.startswith("error: runtime.model='org/absent': cannot download org/absent")
    assert "HF_HUB_OFFLINE=1 is set" in offline_line
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_a_missing_path_says_path_not_found(tmp_path):
    result = run_pipeline(["runtime.model=./models/nope"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == \
        f"error: runtime.model='./models/nope': path not found: {tmp_path / 'models' / 'nope'}"


def test_models_lists_models_dir_and_the_hugging_face_cache(tmp_path, hf_cache, tiny_model):
    shutil.copytree(tiny_model, tmp_path / "models" / "tiny-local")
    (tmp_path / "models" / "empty").mkdir()
    env = {"HF_HUB_CACHE": str(hf_cache)}
    listed = run_pipeline(["--json", "--digest"], cwd=tmp_path, module="pipeline.models", env=env)
    assert listed.returncode == 0, listed.stderr
    entries = {e["reference"]: e for e in json.loads(listed.stdout)}
    # the models shipped in the package come first, under the aliases a run takes (runtime.model=demo)
    assert list(entries)[:5] == ["demo", "tool-demo", "thinking-demo", "vision-demo", "judge-demo"]
    assert set(entries) == {"demo", "tool-demo", "thinking-demo", "vision-demo", "judge-demo", "tiny-local", "empty", "org/tiny"}
    assert entries["demo"]["kind"] == "built-in" and entries["demo"]["problem"] is None
    assert entries["vision-demo"]["modalities"] == ["text", "image"]
    assert entries["org/tiny"]["kind"] == "hf-cache" and entries["tiny-local"]["kind"] == "models-dir"
    assert entries["org/tiny"]["weights_digest"] == entries["tiny-local"]["weights_digest"]  # same files, same digest
    assert entries["tiny-local"]["architecture"] == "LlamaForCausalLM" and entries["tiny-local"]["context_length"] == 128
    assert "no config.json" in entries["empty"]["problem"]
    table = run_pipeline([], cwd=tmp_path, module="pipeline.models", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["model", "kind", "architecture", "params"]
    assert any(line.startswith("org/tiny") and "LlamaForCausalLM" in line for line in lines)
    assert any(line.startswith("empty") and "unusable" in line for line in lines)
    assert lines[1].split()[:3] == ["demo", "built-in", "LlamaForCausalLM"]


def test_weights_that_break_at_load_time_fail_the_run_with_the_file_name(tmp_path, tiny_model, small_dataset):
    folder = Path(shutil.copytree(tiny_model, tmp_path / "overlap"))
    overlap_two_tensors(folder / "model.safetensors")
    result = run_pipeline([f"runtime.model={folder}", f"dataset.path={small_dataset}"], cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"run failed: cannot read weights file model.safetensors in {folder}")
    status = json.loads((only_run_dir(tmp_path) / "status.json").read_text())
    assert status["state"] == "failed" and "model.safetensors" in status["reason"]
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    assert run.info.status == "FAILED"


def test_left_truncation_through_the_command_line(tmp_path, tiny_model):
    dataset = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "prompt": "z" * 300}, {"id": "ok", "prompt": "hi"}])
    refused = run_pipeline([f"runtime.model={tiny_model}", f"dataset.path={dataset}", "tracking=none"], cwd=tmp_path)
    assert refused.returncode == 2 and "session.truncation=left" in refused.stderr.strip().splitlines()[-1]
    result = run_pipeline([f"runtime.model={tiny_model}", f"dataset.path={dataset}", "tracking=none",
                           "session.truncation=left", "hydra.run.dir=runs/cut"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "runs" / "cut" / "transcript.jsonl").read_text().splitlines()]
    assert [(r["sample_id"], r["truncated"]) for r in records] == [("long", True), ("ok", False)]
