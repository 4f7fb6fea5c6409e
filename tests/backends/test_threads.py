"""runtime.threads: torch in the run uses the threads asked for, by default the cores the process may run on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import pipeline_env, run_pipeline


def test_the_run_sets_torchs_threads_as_asked_and_records_them(tmp_path):
    result = run_pipeline(["tracking=none", "dataset.limit=2", "runtime.threads=1", "hydra.run.dir=runs/one"],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "one"
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["backend_options"]["threads"] == 1 and plan["reasons"]["threads"] == "runtime.threads=1"
    # torch.get_num_threads() in the run, after the load set it (the machine has more cores than that)
    assert json.loads((run_dir / "load.json").read_text())["threads"] == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two cores")
def test_by_default_the_plan_takes_the_cores_the_process_may_run_on(tmp_path):
    first = sorted(os.sched_getaffinity(0))[:1]
    args = ["pipeline.until=plan", "tracking=none"]
    whole = run_pipeline(args + ["hydra.run.dir=runs/all"], cwd=tmp_path)
    pinned = subprocess.run([sys.executable, "-m", "pipeline", *args, "hydra.run.dir=runs/pinned"], cwd=tmp_path,
                            env=pipeline_env(), capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: os.sched_setaffinity(0, first))  # as `taskset -c N` does
    assert whole.returncode == 0 and pinned.returncode == 0, whole.stderr + pinned.stderr
    assert json.loads(whole.stdout)["backend_options"]["threads"] == len(os.sched_getaffinity(0))
    plan = json.loads(pinned.stdout)
    assert plan["backend_options"]["threads"] == 1 and "the 1 core(s) this process may run on" in plan["reasons"]["threads"]
