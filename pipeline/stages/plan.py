"""Plan stage: what every backend kind needs done once, then the chosen kind's own plan; nothing is loaded
and no request is sent for generation.

The neutral work is here: the backend settings checked against their kind, the samples read and decoded
(media URLs fetched where the kind's model reads bytes in this process), the scorer checked against every
reference, the tools imported, and each image or audio part checked against what the model takes. The kind
(pipeline.backends.registry) then counts tokens, checks thinking and the context, decides its options with
reasons, and builds its backend; capabilities decide what a run may ask, never a kind's name. The backend
goes behind the response cache when `cache.enabled` (pipeline.backends.cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from pipeline.answering.tools import load_tools
from pipeline.backends import registry
from pipeline.backends.base import Backend
from pipeline.backends.cache import with_cache
from pipeline.core.config import Config
from pipeline.core.errors import UserError
from pipeline.core.records import ResolvedModel, RuntimePlan, Sample
from pipeline.data.dataset import load_samples
from pipeline.scoring.scorers import check_scorer, sample_references


def plan(config: Config, resolved: ResolvedModel, run_dir: Optional[Path], overrides: Iterable[str],
         samples: Optional[list[Sample]] = None, defer_load: bool = True) -> tuple[RuntimePlan, list[Sample], Backend]:
    """The run's plan, its samples, and the backend that will carry the plan out (not yet loaded).

    `samples`: these instead of the dataset's (a judge's prompts, pipeline.stages.judge; the Python client's
    probe). `defer_load`: with the cache, load the model only when something misses (pipeline.backends.cache)."""
    settings = registry.check(config)
    kind = registry.kind(config.backend.name)
    if config.dataset.kind == "perplexity" and not kind.rolling_loglikelihood:
        raise UserError(f"dataset.kind=perplexity scores whole texts by log-likelihood, which backend="
                        f"{kind.name} does not give; use a backend that does ({_kinds_with_rolling()})")
    samples = read_samples(config) if samples is None else samples
    scorer = check_scorer(config.dataset.scorer, sample_references(samples))
    tools = [tool.schema for tool in load_tools(config.session.tools)]
    check_modalities(resolved, samples, kind.modalities_from)
    planned = kind.plan(registry.PlanRequest(config, resolved, samples, tools, tuple(overrides), run_dir, settings))
    runtime_plan = planned.plan
    runtime_plan.tools = tools
    runtime_plan.checks.append(f"scorer {scorer.label} is ready for every reference in the dataset")
    if tools:
        runtime_plan.checks.append(f"tools {', '.join(s['function']['name'] for s in tools)} import")
    return runtime_plan, samples, with_cache(planned.backend, config.cache, defer_load=defer_load)


def read_samples(config: Config) -> list[Sample]:
    """The dataset's samples as the plan reads them: every file decoded, and, with runtime.allow_download=true
    and a kind whose model reads bytes here, each media URL fetched once into the media cache."""
    return load_samples(config.dataset, config.runtime.allow_download, registry.media_fetcher(config))


def check_modalities(model: ResolvedModel, samples: list[Sample], set_by: str = "") -> int:
    """How many image and audio parts the samples have, once each is of a kind the model takes; a UserError
    for the first that is not (the dataset reader already found each readable)."""
    parts = 0
    for sample in samples:
        for message in sample.messages:
            for part in message.media:
                parts += 1
                if part.kind not in model.modalities:
                    where = f"{set_by}={list(model.modalities)}; add {part.kind} there if the model takes it" if set_by \
                        else f"use a model that accepts {part.kind}s"
                    raise UserError(f"sample {sample.id!r} has an {part.kind} part but model {model.reference!r} "
                                    f"takes {' and '.join(model.modalities)} only, not {part.kind} ({where}), "
                                    "or remove the part")
    return parts


def _kinds_with_rolling() -> str:
    found = []
    for name in registry.names():
        try:
            if registry.kind(name).rolling_loglikelihood:
                found.append(f"backend={name}")
        except ImportError:
            continue
    return ", ".join(found)
