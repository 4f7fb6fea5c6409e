"""backend=transformers as a kind of the registry (pipeline.backends.registry): a model folder loaded into this
process with transformers and torch. Its settings are runtime.* (device, dtype, offload, ...); backend.* holds
only its name. Nothing heavy is imported here: torch and transformers load when the model does."""

from __future__ import annotations

from pipeline.backends.peak_memory import peak_memory, reset_peak_memory
from pipeline.backends.registry import BackendKind, KindPlan, PlanRequest
from pipeline.core.config import IN_PROCESS_RUNTIME


def plan(request: PlanRequest) -> KindPlan:
    from pipeline.backends.transformers.backend import TransformersBackend
    from pipeline.backends.transformers.plan import plan_from_config

    config = request.config
    runtime_plan, template = plan_from_config(config, request.model, request.samples, request.tools,
                                              request.overrides)
    backend = TransformersBackend(runtime_plan, config.session, template, config.runtime.trust_remote_code,
                                  request.run_dir, config.runtime.reuse)
    own = backend.plan([])  # identity, capabilities, options with reasons: the same shape every kind records
    own.checks, own.warnings = [], []  # already the run plan's own
    runtime_plan.backend_plan = own.to_dict()
    return KindPlan(runtime_plan, backend)


KIND = BackendKind(
    name="transformers",
    describe="a model folder loaded into this process with transformers and torch (settings: runtime.*)",
    settings=None,
    plan=plan,
    runtime_keys=frozenset(IN_PROCESS_RUNTIME) | {"batch_size=auto"},
    peak_memory=peak_memory,
    reset_peak_memory=reset_peak_memory,
    rolling_loglikelihood=True,
)
