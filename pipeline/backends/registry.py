"""The one registry of backend kinds: how `backend=<name>` becomes settings, a resolved model, a plan
and a Backend, without anything above `pipeline/backends/` naming a kind or importing its libraries.

Each kind lives in its own folder and describes itself once, as a `BackendKind` in its `kind.py`
(which imports nothing heavy: torch, vLLM or an HTTP client load only when the kind plans or builds).
`KINDS` below maps each name to that module; it is the only line a new backend adds outside its
folder. The stages ask this module for the chosen kind and call it; capabilities, never names,
decide what a run may ask (docs/backends.md says how to add one, with vLLM as the example).

This module is not the backend contract (pipeline.backends.base) nor the plan stage's neutral work
(pipeline.stages.plan): it only finds kinds and checks a config's backend settings against them.
"""

from __future__ import annotations

import importlib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from pipeline.core.config import (IN_PROCESS_RUNTIME, BackendConfig, Config, ConfigError, OtherBackendSetting,
                                  RuntimeConfig)
from pipeline.core.errors import UserError

if TYPE_CHECKING:
    from pipeline.backends.base import Backend
    from pipeline.core.records import ResolvedModel, RuntimePlan, Sample

# name -> the module holding its KIND; imported only when that kind is asked for
KINDS = {
    "transformers": "pipeline.backends.transformers.kind",
    "openai": "pipeline.backends.openai.kind",
    "vllm": "pipeline.backends.vllm.kind",
}


class UnknownSetting(ConfigError):
    """A backend.* key that no kind has: "backend.foo: backend=openai has no such setting; its settings: ..."."""

    def __init__(self, key: str, chosen: str, known: str) -> None:
        self.key, self.value, self.allowed = key, None, known
        UserError.__init__(self, f"{key}: backend={chosen} has no such setting; its settings: {known}")


@dataclass
class PlanRequest:
    """What the plan stage has done for every kind, handed to the kind's `plan`."""

    config: Config  # the run's config (the judge's: its own sections)
    model: "ResolvedModel"
    samples: list["Sample"]  # read and decoded; media parts checked against model.modalities
    tools: list[dict[str, Any]]  # the JSON schemas of session.tools (imported and checked)
    overrides: Sequence[str] = ()  # the command line's keys: which generation settings the user set
    run_dir: Optional[Path] = None  # where the run writes (a backend's scratch files, e.g. offloaded weights)
    settings: Any = None  # the kind's validated settings (its `settings` dataclass), filled in by the plan stage


@dataclass
class KindPlan:
    """A kind's answer to `plan`: the run's plan, and the backend that will carry it out (not loaded).

    The backend is built in the same call because a served kind asks its server while planning, and
    that connection is the backend's; an in-process kind builds its (light, unloaded) backend from the plan."""

    plan: "RuntimePlan"
    backend: "Backend"


@dataclass(frozen=True)
class BackendKind:
    """One kind of backend, as the stages see it."""

    name: str
    describe: str  # one line: what it runs and where ("a model in this process with transformers and torch")
    settings: Optional[type]  # the dataclass of its backend.* keys (None: it reads none; its yaml holds only name)
    plan: Callable[[PlanRequest], KindPlan]  # options with reasons, checks, the backend built; nothing loaded
    # runtime.* keys it reads, of those in pipeline.core.config.IN_PROCESS_RUNTIME (the neutral ones, model,
    # batch_size, aliases, ..., every kind reads); any other left off its default is refused with one line
    runtime_keys: frozenset[str] = frozenset()
    runtime_hint: str = "it does not read it"  # why a runtime.* key it does not read is refused, in words
    # runtime.model -> what it is; None: a local model folder, found and read as pipeline.stages.resolve does
    resolve: Optional[Callable[[RuntimeConfig, BackendConfig], "ResolvedModel"]] = None
    run_tags: Callable[["RuntimePlan"], dict[str, str]] = lambda plan: {}  # MLflow tags beyond the neutral ones
    # the peak memory the run used and where it was read (None when not measurable here), given the plan's device
    peak_memory: Callable[[str], tuple[Optional[int], str]] = lambda device: (None, "not measured by this backend")
    reset_peak_memory: Callable[[str], None] = lambda device: None
    passes_urls: bool = False  # media URLs go to the model as they are (a server fetches them), not fetched here
    rolling_loglikelihood: bool = False  # whole texts scored in windows (dataset.kind=perplexity)
    in_process: bool = True  # the model runs in this process (a cluster job may need a GPU), not behind a server
    modalities_from: str = ""  # where the model's modalities are set, when not by the model's files (a setting)


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def kind(name: str) -> BackendKind:
    """The kind registered as `name`; a UserError naming backend.name for one that is not."""
    module = KINDS.get(name)
    if module is None:
        raise ConfigError("backend.name", name, ", ".join(KINDS))
    return importlib.import_module(module).KIND


def media_fetcher(config: Config) -> Optional[Callable]:
    """How the plan fetches the dataset's media URLs for this run's kind: into the local media cache where the
    model reads bytes in this process (with runtime.allow_download=true), not at all where they are passed on."""
    if kind(config.backend.name).passes_urls:
        return None
    from pipeline.backends.media_fetch import fetcher

    return fetcher(config)


def settings(backend: BackendConfig, prefix: str = "backend") -> Any:
    """The chosen kind's settings dataclass with the config's values (unset ones at its defaults), checked.

    A key the kind does not have is refused with its full name, and, where another kind has it, which
    one: "backend.base_url is a setting of backend=openai, not backend=transformers: add backend=openai"."""
    chosen = kind(backend.name)
    given = {key: value for key, value in backend.values.items() if value is not None}
    known = {f.name for f in fields(chosen.settings)} if chosen.settings else set()
    for key in given:
        if key not in known:
            owner = next((other for other in KINDS if other != backend.name and key in _keys(other)), None)
            if owner is not None:
                raise OtherBackendSetting(f"{prefix}.{key}", owner, backend.name, f"add {prefix}={owner}"
                                          if prefix == "backend" else f"set {prefix}.backend={owner}")
            raise UnknownSetting(f"{prefix}.{key}", backend.name, ", ".join(sorted(known)) or "none (they are runtime.*)")
    if chosen.settings is None:
        return None
    try:
        made = chosen.settings(**given)
        check = getattr(made, "validate", None)
        return check() if check is not None else made
    except ConfigError as error:
        if prefix != "backend":
            raise ConfigError(error.key.replace("backend.", f"{prefix}.", 1), error.value, error.allowed) from None
        raise
    except TypeError as error:  # a value of the wrong shape for the dataclass
        raise UserError(f"{prefix}: {error}") from None


def effective_settings(backend: BackendConfig) -> dict[str, Any]:
    """The chosen kind's name and every setting with defaults filled in: what the run records."""
    made = settings(backend)
    values = asdict(made) if made is not None else {}
    return {"name": backend.name, **{key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}}


def check(config: Config) -> Any:
    """Every backend setting of the run (and of its judge) against its kind, before anything loads; returns the
    run's kind settings. The runtime.* keys of in-process models are refused where the kind does not read them."""
    chosen = kind(config.backend.name)
    for key, free in IN_PROCESS_RUNTIME.items():
        value = getattr(config.runtime, key)
        if key not in chosen.runtime_keys and value != free:
            owner = next((name for name in KINDS if key in kind(name).runtime_keys), "transformers")
            raise OtherBackendSetting(f"runtime.{key}={_shown(value)}", owner, config.backend.name,
                                      f"{chosen.runtime_hint}; leave runtime.{key} at {_shown(free)}")
    if config.runtime.batch_size == "auto" and "batch_size=auto" not in chosen.runtime_keys:
        raise OtherBackendSetting("runtime.batch_size=auto", "transformers", config.backend.name,
                                  "give a number (requests handed to the backend together)")
    if config.scoring.judge.enabled:
        _, judge_backend, _ = config.scoring.judge.settings()
        settings(judge_backend, prefix="scoring.judge")
    return settings(config.backend)


def reads_runtime(backend: BackendConfig, key: str) -> bool:
    """Whether the backend's kind reads the runtime.* setting `key` (one of IN_PROCESS_RUNTIME)."""
    return key in kind(backend.name).runtime_keys


def defaults(name: str) -> dict[str, Any]:
    """A kind's settings at their defaults (what conf/backend/<name>.yaml should list)."""
    chosen = kind(name)
    if chosen.settings is None:
        return {}
    return {f.name: (f.default if f.default is not MISSING else f.default_factory())  # type: ignore[misc]
            for f in fields(chosen.settings)}


def _keys(name: str) -> set[str]:
    try:
        chosen = kind(name)
    except ImportError:  # an optional kind whose module cannot load here: it owns no key we can name
        return set()
    return {f.name for f in fields(chosen.settings)} if chosen.settings else set()


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def describe_all() -> Mapping[str, str]:
    """Each kind and its one line (for help and errors)."""
    return {name: kind(name).describe for name in KINDS}
