"""The package as a user installs it: the wheel, `pip install`ed into a fresh virtual environment, and
`llm-pipeline` run from an empty folder.

A plain (non-editable) install must carry all a run needs: the configs (conf/, which the wheel
holds as pipeline/conf), the launcher plugin (hydra_plugins/pipeline_launcher: the default config
selects it, and Hydra finds it only by scanning the hydra_plugins namespace), the assets (the demo
model and datasets) and the `llm-pipeline` command. Runs, and the MLflow store, land under the
folder it is started from; nothing is written into the installed package.

The wheel is built offline from a copy of the source (`pip wheel --no-build-isolation` with this
environment's setuptools). The fresh environment reaches this environment's packages (torch and
the rest, not installed again) through a .pth line; the package itself comes only from the wheel:
PYTHONPATH is cleared, and a .pth line adds a folder without running that folder's own .pth files
(where an editable install of the project hooks in).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.transcript import read_records
from tests.conftest import (
    DEMO_DATASET,
    mlflow_client,
    only_run_dir,
    pipeline_env,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ("pyproject.toml", "setup.py", "README.md", "conf", "pipeline", "hydra_plugins")  # what the build reads
PIP = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}  # no network, no questions


def user_env() -> dict[str, str]:
    """A user's shell in the fresh environment: none of this checkout on the import path."""
    return {k: v for k, v in pipeline_env().items() if k != "PYTHONPATH"} | PIP


def check(command: list, cwd: Path, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env or user_env(), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def packages(venv: Path) -> Path:
    """The virtual environment's site-packages."""
    [folder] = (venv / "lib").glob("python3.*/site-packages")
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed: its folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCE:  # a clean copy: no build/ left from an earlier build, no runs/, no .venv
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
           "-w", tmp / "dist", source], cwd=tmp, env={**os.environ, **PIP})
    [wheel] = (tmp / "dist").glob("llm_pipeline-*.whl")
    venv = tmp / "venv"
    check([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    ours = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    (packages(venv) / "shared_packages.pth").write_text("".join(f"{path}\n" for path in dict.fromkeys(ours)))
    # --ignore-installed: the shared packages may hold the project's editable install; it is left alone
    check([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--no-compile",
           "--quiet", wheel], cwd=tmp)
    return venv


@pytest.mark.slow
def test_the_installed_command_runs_the_demo_from_an_empty_folder(installed, tmp_path):
    site_packages = packages(installed)
    package = snapshot(site_packages / "pipeline")
    assert "conf/config.yaml" in package and "assets/demo_model/model.safetensors" in package
    assert (site_packages / "hydra_plugins" / "pipeline_launcher" / "__init__.py").is_file()

    folder = tmp_path / "empty"
    folder.mkdir()
    result = check([installed / "bin" / "llm-pipeline", "dataset.limit=5"], cwd=folder, timeout=300)

    run_dir = only_run_dir(folder)
    assert f"run dir   {run_dir.relative_to(folder)}" in result.stdout
    assert f"(sqlite:///{folder / 'runs' / 'mlflow.db'})" in result.stdout
    # no Makefile here: the line says the command that serves the store, not `make ui`
    assert f"; `mlflow ui --backend-store-uri sqlite:///{folder / 'runs' / 'mlflow.db'}`, then " \
           "http://127.0.0.1:5000/#/experiments/" in result.stdout and "make ui" not in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["runs"]
    records = read_records(run_dir / "transcript.jsonl")
    demo = [json.loads(line)["id"] for line in DEMO_DATASET.read_text().splitlines()[:5]]
    assert sorted(r.sample_id for r in records) == sorted(demo)
    assert all(r.status == "ok" and r.response for r in records)
    client = mlflow_client(folder)
    [run] = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["samples"] == 5
    # the run read the installed package's configs and assets, and wrote nothing there
    assert str(site_packages / "pipeline" / "assets" / "demo_model") in (run_dir / "config.json").read_text()
    assert {k: v for k, v in snapshot(site_packages / "pipeline").items() if "__pycache__" not in k} == package
