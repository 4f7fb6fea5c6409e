"""A run imports only what it uses: no torch for a plan, no HTTP client without a server, no MLflow
with tracking=none, nothing past the check for a config mistake (start-up time; figures in `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import pipeline_env

WATCHED = ("torch", "transformers", "openai", "httpx", "mlflow", "pipeline.run.runner")


def imported(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -m pipeline ARGS` and the watched modules it had imported when it ended."""
    # printed by an atexit handler: python -m pipeline ends with os._exit after running those
    code = ("import atexit, json, sys, runpy\n"
            f"sys.argv = ['pipeline', *{args!r}]\n"
            f"atexit.register(lambda: print('IMPORTED=' + json.dumps([m for m in {WATCHED!r} if m in sys.modules]), "
            "file=sys.stderr))\n"
            "runpy.run_module('pipeline', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=pipeline_env(), capture_output=True,
                            text=True, timeout=300)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("IMPORTED=")]
    return result, set(json.loads(line.removeprefix("IMPORTED=")))


def test_a_plan_imports_no_model_library_no_http_client_and_no_mlflow(tmp_path):
    result, modules = imported(["pipeline.until=plan"], tmp_path)  # tracking on: the plan comes before MLflow
    assert result.returncode == 0, result.stderr
    assert modules == {"pipeline.run.runner"}


def test_a_config_mistake_is_refused_before_the_runner_is_imported(tmp_path):
    result, modules = imported(["generation.top_p=1.5"], tmp_path)
    assert result.returncode == 2 and "generation.top_p=1.5" in result.stderr
    assert modules == set()


def test_a_run_without_tracking_imports_no_mlflow_and_no_http_client(tmp_path):
    result, modules = imported(["tracking=none", "dataset.limit=2"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    assert modules == {"torch", "transformers", "pipeline.run.runner"}
