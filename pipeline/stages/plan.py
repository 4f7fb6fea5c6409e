"""Plan stage: the chosen backend plans the run (its options, token counts, the checks) and is built
from that plan; nothing is loaded and no request is sent.

The planning itself is each backend's: pipeline.backends.transformers.plan for the in-process model,
pipeline.backends.openai.plan for a served one. This module only picks one by `backend.name`, and puts
it behind the response cache when `cache.enabled` (pipeline.backends.cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from pipeline.backends.base import Backend
from pipeline.backends.cache import with_cache
from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.records import ResolvedModel, RuntimePlan, Sample


def plan(config: Config, resolved: ResolvedModel, run_dir: Path, overrides: Iterable[str],
         samples: Optional[list[Sample]] = None) -> tuple[RuntimePlan, list[Sample], Backend]:
    """The run's plan, its samples, and the backend that will carry the plan out (not yet loaded).

    `samples`: these instead of the dataset's (a judge's prompts, pipeline.stages.judge)."""
    if config.dataset.kind == "perplexity" and config.backend.name != "transformers":
        raise UserError(f"dataset.kind={config.dataset.kind} scores by log-likelihood, which backend="
                        f"{config.backend.name} does not give yet; use backend=transformers")
    if config.backend.name == "openai":
        from pipeline.backends.openai import OpenAIBackend  # only a served run pays for the HTTP client
        from pipeline.backends.openai.plan import plan_served

        served = OpenAIBackend(config.backend.openai(), resolved.reference)
        runtime_plan, samples = plan_served(config, resolved, served, overrides, samples)
        served.generation = runtime_plan.generation  # requests are made from what the plan recorded
        return runtime_plan, samples, with_cache(served, config.cache)
    from pipeline.backends.transformers.backend import TransformersBackend
    from pipeline.backends.transformers.plan import plan_from_config

    runtime_plan, samples, template = plan_from_config(config, resolved, overrides, samples)
    return runtime_plan, samples, with_cache(TransformersBackend(runtime_plan, config.session, template,
                                                                 config.runtime.trust_remote_code, run_dir,
                                                                 config.runtime.reuse), config.cache)
