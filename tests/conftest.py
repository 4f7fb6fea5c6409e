"""Shared fixtures: a tiny random model, small datasets, and a runner for the real entry point."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from pipeline.core.config import (
    ASSETS_DIR,
    Config,
    DatasetConfig,
    RuntimeConfig,
    SessionConfig,
    register,
)
from tests.helpers.tiny_model import build_tiny_model

# the environment this test process started with, before any library (vLLM's CPU platform) changed it
STARTING_LD_PRELOAD = os.environ.get("LD_PRELOAD")
DEMO_DATASET = ASSETS_DIR / "datasets" / "addition.jsonl"
DEMO_MODEL = ASSETS_DIR / "demo_model"


# The files that take longest (seconds of a full run on 2 cores), started first: `make test` gives each worker
# a file at a time, so a long file started last keeps one worker busy while the other has nothing left.
LONGEST_FIRST = (
    "backends/test_vllm.py", "backends/test_vllm_server.py", "cluster/test_slurm_sweep.py",
    "end_to_end/test_server_end_to_end.py", "tracking/test_mlflow_server.py", "end_to_end/test_end_to_end.py",
    "tracking/test_ui.py", "end_to_end/test_judge_end_to_end.py",
    "answering/test_tools_end_to_end.py", "end_to_end/test_bench.py", "run/test_signals.py", "backends/test_thinking.py",
    "backends/test_speed.py", "tracking/test_mlflow_store.py", "run/test_kill.py", "run/test_resume_integrity.py",
    "tracking/test_scale_out.py", "stages/test_score_stage.py", "stages/test_judge_stage.py",
    "tracking/test_assessments.py", "end_to_end/test_cache_end_to_end.py", "stages/test_execute_end_to_end.py",
    "cli/test_models_end_to_end.py", "run/test_reading_run_folders.py", "tracking/test_parallel_sweep.py",
    "run/test_early_signals.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the other files keep their order


@pytest.fixture(scope="session", autouse=True)
def _registered(tmp_path_factory):
    register()
    # digests and other small caches go to a test folder, not the user's ~/.cache
    os.environ["PIPELINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _logging_kept():
    """A run in this process configures logging (Hydra's job logging) onto the test's captured streams,
    which close with the test: put every logger's handlers and level back, so that no later test logs
    into a closed stream ("--- Logging error ---" and a traceback in its stderr)."""
    import logging

    loggers = [logging.root, *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    kept = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger not in loggers:
            logger.handlers[:] = []
    for logger, handlers, level, propagate in kept:
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    return write_jsonl(tmp_path / "small.jsonl", [
        {"id": f"s{i}", "prompt": f"What is {10 + i}+{20 + i}?", "reference": str(30 + 2 * i)} for i in range(5)
    ])


def make_config(model: Path, dataset: Path, **sections) -> Config:
    """A Config for in-process stage tests: the given model and dataset, on the CPU, batches of 2."""
    config = Config(runtime=RuntimeConfig(model=str(model), device="cpu", batch_size=2),
                    dataset=DatasetConfig(path=str(dataset)))
    for name, value in sections.items():
        setattr(config, name, value)
    return config


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` by its sha256: what a test compares to show nothing was written or changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def unscored(data: bytes) -> bytes:
    """Transcript lines as execute wrote them: the score stage's fields (score, extracted) back to null.

    The score stage rewrites the transcript once, with each answer's score; every other byte of a
    record stays as execute wrote it, which is what tests of kept records compare."""
    lines = [json.loads(line) for line in data.splitlines()]
    return "".join(json.dumps({**r, **{k: None for k in ("score", "extracted") if k in r}}, ensure_ascii=False) + "\n"
                   for r in lines).encode()


def model_copy(tmp: Path, change: Callable[[Path], None]) -> Path:
    """A copy of the demo model folder under `tmp`, changed by `change` (a broken model for a test)."""
    folder = tmp / "model"
    shutil.copytree(DEMO_MODEL, folder)
    change(folder)
    return folder


def pipeline_env() -> dict[str, str]:
    """The environment of a user's shell: none of our, MLflow's or Hydra's settings leak in from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "MLFLOW_", "HYDRA_"))}
    env["HF_HUB_OFFLINE"] = "1"
    if "PIPELINE_CACHE_DIR" in os.environ:
        env["PIPELINE_CACHE_DIR"] = os.environ["PIPELINE_CACHE_DIR"]
    return env


def run_pipeline(args: list[str], cwd: Path, timeout: float = 300, module: str = "pipeline",
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in `cwd`, as a user would type it; runs/ lands under cwd."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env={**pipeline_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def run_main(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`python -m pipeline ARGV` in this process (for mistakes refused before anything runs): (exit code, stderr)."""
    from pipeline.__main__ import main

    monkeypatch.setattr(sys, "argv", ["pipeline", *argv])
    monkeypatch.delenv("PIPELINE_RUN_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:  # the logging it configures is undone by _logging_kept
        main()
    return exited.value.code, capsys.readouterr().err


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """`transformers serve` over the demo model on a free loopback port, shared by the server tests."""
    from tests.helpers.openai_server import serving

    with serving(DEMO_MODEL, tmp_path_factory.mktemp("serve") / "serve.log") as server:
        yield server


@pytest.fixture(scope="session")
def tool_served(tmp_path_factory):
    """`transformers serve` over the tool demo model (it calls `add` in its own <tool_call> format)."""
    from tests.helpers.openai_server import serving

    with serving(ASSETS_DIR / "tool_model", tmp_path_factory.mktemp("serve") / "tools.log") as server:
        yield server


@pytest.fixture(scope="session")
def vllm_tools(tmp_path_factory):
    """One vLLM engine in this process over the tool demo model, shared by the whole test session (it takes seconds
    of imports and the engine's start, and about 1 GB): the conformance suite (tests/backends/test_backends.py) and
    tests/backends/test_vllm.py. Skipped where vLLM is not installed (pip install -e ".[vllm]")."""
    pytest.importorskip("vllm", reason='backend=vllm needs vLLM: pip install -e ".[vllm]"')
    from tests.helpers.vllm_engine import ADD_TOOL, vllm_backend, vllm_config

    config = vllm_config(ASSETS_DIR / "tool_model", tmp_path_factory.mktemp("vllm"), session=SessionConfig(tools=[ADD_TOOL]))
    backend, plan = vllm_backend(config)
    backend.load()
    yield backend, plan.tools
    backend.close()


@pytest.fixture(scope="session")
def vllm_served(tmp_path_factory):
    """vLLM's OpenAI-compatible server over the demo model, served as `demo`, once per test session (its start
    takes a minute or two and about 3 GB); skipped where vllm is not installed."""
    from tests.helpers.vllm_server import VllmServer, vllm_missing

    if vllm_missing():
        pytest.skip(vllm_missing())
    with VllmServer(DEMO_MODEL, tmp_path_factory.mktemp("vllm") / "server.log") as server:
        yield server


def mlflow_client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")


def only_run_dir(cwd: Path) -> Path:
    """The single run folder a single run created under cwd/runs/<date>/."""
    folders = [p for p in (cwd / "runs").glob("*/*") if p.is_dir() and p.parent.name not in ("multirun", "mlartifacts")]
    assert len(folders) == 1, folders
    return folders[0]


def read_until(fd: int, marker: str, timeout: float = 120) -> str:
    """Read a pseudo-terminal until `marker` shows; everything read so far."""
    seen, deadline = b"", time.monotonic() + timeout
    while marker.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {marker!r} within {timeout} s; got {seen.decode(errors='replace')!r}")
        seen += os.read(fd, 4096)
    return seen.decode(errors="replace")


@contextlib.contextmanager
def terminal_chat(args: list[str], cwd: Path):
    """`python -m pipeline.chat ARGS` on a pseudo-terminal, as a person runs it: yields (process, terminal fd)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "pipeline.cli.chat", *args], cwd=cwd, env=pipeline_env(),
                               stdin=terminal, stdout=terminal, stderr=subprocess.PIPE)
    os.close(terminal)
    try:
        yield process, controller
    finally:
        process.kill()
        os.close(controller)


def in_process(runtime, config: Config):
    """The transformers backend over a model loaded by pipeline.backends.transformers.load, as execute takes it."""
    from pipeline.backends.transformers.backend import TransformersBackend

    return TransformersBackend.from_runtime(runtime, config.session)
