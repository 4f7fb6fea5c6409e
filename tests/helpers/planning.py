"""The plan stage as the runner runs it, for tests that then load and execute the in-process model by hand:
(the plan, the samples, the chat template the backend renders with)."""

from __future__ import annotations

from typing import Iterable

from pipeline.core.config import Config
from pipeline.stages.plan import plan
from pipeline.stages.resolve import resolve


def plan_in_process(config: Config, overrides: Iterable[str] = ()):
    runtime_plan, samples, backend = plan(config, resolve(config.runtime, config.backend), None, tuple(overrides))
    return runtime_plan, samples, getattr(backend, "chat_template", None)
