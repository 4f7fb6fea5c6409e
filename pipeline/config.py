"""Typed configuration: the dataclass schemas behind `conf/`, and their validation.

Hydra composes YAML onto these schemas (registered in Hydra's ConfigStore), so an unknown key or
a wrong type is refused by OmegaConf with the key's full name. OmegaConf does no range checks:
those live in each schema's `__post_init__`, which runs when `to_config` turns the composed
DictConfig into plain dataclasses. Nothing past the entry point sees a DictConfig.

This module does not read files or load anything; it only describes and checks settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the project's Hydra configs
STAGES = ("resolve", "plan", "load", "execute", "summarize")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, value, "one of " + ", ".join(choices))


@dataclass
class RuntimeConfig:
    """Which model runs, where and how."""

    model: str = "demo"  # a built-in or user alias, or a local model folder
    aliases: Dict[str, str] = field(default_factory=dict)  # extra aliases: name -> folder
    device: str = "auto"  # auto picks cuda > mps > cpu; or cpu, cuda, cuda:N, mps
    dtype: str = "auto"  # auto: bf16/fp16 on accelerators, fp32 on CPU
    batch_size: int = 8  # prompts generated together
    trust_remote_code: bool = False  # never run code shipped with a model unless asked

    def __post_init__(self) -> None:
        _check(bool(self.model.strip()), "runtime.model", self.model, "a non-empty model reference")
        base_device = self.device.split(":", 1)[0]
        _check_choice("runtime.device", base_device, DEVICES)
        if ":" in self.device:
            index = self.device.split(":", 1)[1]
            _check(base_device == "cuda" and index.isdigit(), "runtime.device", self.device,
                   "an index only after cuda, as in cuda:0")
        _check_choice("runtime.dtype", self.dtype, DTYPES)
        _check(self.batch_size >= 1, "runtime.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class GenerationConfig:
    """How tokens are chosen; maps onto transformers' GenerationConfig."""

    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling, in (0, 1]
    top_k: int = 0  # 0 turns top-k filtering off
    repetition_penalty: float = 1.0  # 1.0 is none
    max_new_tokens: int = 8  # upper bound on generated tokens per sample
    seed: int = 0  # seeds sampling; the same seed gives the same outputs
    stop: List[str] = field(default_factory=list)  # generation ends at any of these strings

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "generation.temperature", self.temperature, "a number >= 0 (0 = greedy)")
        _check(0 < self.top_p <= 1, "generation.top_p", self.top_p, "a number in (0, 1]")
        _check(self.top_k >= 0, "generation.top_k", self.top_k, "an integer >= 0 (0 = off)")
        _check(self.repetition_penalty > 0, "generation.repetition_penalty", self.repetition_penalty,
               "a number > 0 (1.0 = none)")
        _check(self.max_new_tokens >= 1, "generation.max_new_tokens", self.max_new_tokens, "an integer >= 1")
        _check(self.seed >= 0, "generation.seed", self.seed, "an integer >= 0")
        for stop in self.stop:
            _check(stop != "", "generation.stop", self.stop, "non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class SessionConfig:
    """How each sample becomes a conversation for the model."""

    name: str = "default"
    system_prompt: Optional[str] = None  # prepended as a system message; null for none
    chat_template: bool = True  # false: the messages' contents are joined into one raw text prompt


@dataclass
class DatasetConfig:
    """Where the samples come from: a JSONL file of {id, prompt | messages, reference?}."""

    name: str = "addition"
    path: str = "${asset:datasets/addition.jsonl}"
    limit: Optional[int] = None  # keep only the first N samples

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), "dataset.path", self.path, "a path to a .jsonl file")
        _check(self.limit is None or self.limit >= 1, "dataset.limit", self.limit, "null or an integer >= 1")


@dataclass
class TrackingConfig:
    """Where runs are recorded in MLflow."""

    enabled: bool = True  # false (tracking=none): only the local run folder
    uri: str = "sqlite:///runs/mlflow.db"  # relative sqlite paths are taken from the launch folder
    experiment: str = "pipeline"

    def __post_init__(self) -> None:
        _check(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")
        _check("://" in self.uri or self.uri.startswith(("sqlite:", "databricks")), "tracking.uri",
               self.uri, "a tracking URI such as sqlite:///runs/mlflow.db or http://host:5000")


@dataclass
class PipelineConfig:
    """Which stages run."""

    until: str = "summarize"  # stop after this stage: resolve, plan, load, execute, summarize

    def __post_init__(self) -> None:
        _check_choice("pipeline.until", self.until, STAGES)


@dataclass
class Config:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_hash(self) -> str:
        """A digest of every setting that can change what the model writes."""
        relevant = {k: v for k, v in self.to_dict().items() if k in ("runtime", "generation", "session", "dataset")}
        canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _run_token() -> str:
    """A short random token, fixed for this process and inherited by the processes it starts.

    Appended to run folder names so two runs started in the same second never share a folder,
    while every place that resolves the folder name within one run agrees on it.
    """
    token = os.environ.get("PIPELINE_RUN_TOKEN")
    if not token:
        token = secrets.token_hex(3)
        os.environ["PIPELINE_RUN_TOKEN"] = token
    return token


def register() -> None:
    """Register the schema and resolvers with Hydra and OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", lambda rel: str(ASSETS_DIR / rel))
    if not OmegaConf.has_resolver("run_token"):
        OmegaConf.register_new_resolver("run_token", _run_token)
    ConfigStore.instance().store(name="config_schema", node=Config)


def to_config(cfg: DictConfig) -> Config:
    """Turn a composed DictConfig (with or without its hydra node) into a validated Config."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), plain))
    assert isinstance(config, Config)
    return config


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
