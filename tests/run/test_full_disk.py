"""A full disk, for real: the run folder on a small tmpfs filled up, through `python -m pipeline`.

Full when the run starts: one line, exit 1, no folder left behind, nothing in MLflow. Full while
execute runs (the test fills the disk once the transcript holds a record): the records before
are kept, status.json still reaches `failed` (it is written over in place when there is no room
for an atomic copy) and the MLflow run ends FAILED. Mounting needs root (and a kernel that allows
it here); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import mlflow_client, pipeline_env, run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one failed here (root only): "
                    f"{mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> None:
    """Write into `disk` until it has no byte left."""
    with (disk / "filler").open("ab", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and "mlflow.store.db.utils" not in line]
    return lines[-1]


@pytest.mark.parametrize("args, folder", [
    (["hydra.run.dir={disk}/run"], "run"),
    (["-m", "generation.seed=1,2", "hydra.sweep.dir={disk}/sweep"], "sweep"),
], ids=["run", "sweep"])
def test_a_disk_full_when_the_run_starts_says_so_in_one_line_and_leaves_nothing(tmp_path, small_disk, args, folder):
    fill(small_disk)
    result = run_pipeline([arg.format(disk=small_disk) for arg in args] + ["dataset.limit=2"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("run failed: the disk is full while creating") and "free some space" in line, line
    assert [text for text in result.stderr.splitlines() if text.strip() and "mlflow.store.db" not in text] == [line]
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    runs = mlflow_client(tmp_path).search_runs(["1"]) if (tmp_path / "runs" / "mlflow.db").exists() else []
    assert [run.info.status for run in runs if run.info.status == "RUNNING"] == []


def test_a_disk_that_fills_during_execute_ends_the_run_failed_with_its_records_kept(tmp_path, small_disk):
    run_dir = small_disk / "run"
    process = subprocess.Popen([sys.executable, "-m", "pipeline", f"hydra.run.dir={run_dir}", "runtime.batch_size=1",
                                "dataset.limit=60"], cwd=tmp_path, env=pipeline_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ((run_dir / "transcript.jsonl").is_file() and (run_dir / "transcript.jsonl").stat().st_size > 0):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "execute never started"
        time.sleep(0.02)
    fill(small_disk)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 1, stderr
    line = one_line(stderr)
    assert line.startswith("run failed: the disk is full while writing") and "transcript.jsonl" in line, line
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "disk is full" in status["reason"]
    records = [json.loads(text) for text in (run_dir / "transcript.jsonl").read_text().splitlines()]
    assert 1 <= len(records) < 60
    (run,) = mlflow_client(tmp_path).search_runs(["1"])
    assert run.info.status == "FAILED"
