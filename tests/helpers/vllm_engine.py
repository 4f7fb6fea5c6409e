"""backend=vllm built as the plan stage builds it, for tests that drive the backend by hand.

The engine is slow to start (seconds of imports, then the engine) and holds about 1 GB here, so tests share one
per test session (tests/conftest.py's `vllm_tools`); this module only builds backends, it loads none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import Config, DatasetConfig, RuntimeConfig, SessionConfig
from tests.conftest import write_jsonl

ADD_TOOL = {"_target_": "pipeline.answering.demo_tools.add"}


def vllm_config(model: Path, folder: Path, batch_size: int = 4, session: SessionConfig | None = None,
                **settings: Any) -> Config:
    """A one-question run of `model` on backend=vllm, with vLLM's settings `settings` (backend.*)."""
    dataset = write_jsonl(folder / "q.jsonl", [{"id": "q", "prompt": "What is 1+2?"}])
    return Config(runtime=RuntimeConfig(model=str(model), batch_size=batch_size), dataset=DatasetConfig(path=str(dataset)),
                  session=session or SessionConfig(), backend={"name": "vllm", **settings})


def vllm_backend(config: Config):
    """(the VllmBackend the plan built, not loaded; its plan)."""
    from pipeline.stages.plan import plan
    from pipeline.stages.resolve import resolve

    runtime_plan, _, backend = plan(config, resolve(config.runtime, config.backend), None, ())
    return backend, runtime_plan

