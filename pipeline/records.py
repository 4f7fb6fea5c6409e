"""The typed records that flow between stages.

resolve -> ResolvedModel, plan -> RuntimePlan, load -> LoadedRuntime, execute -> TranscriptRecord
(one per sample), summarize -> Summary. Records are plain dataclasses that serialise to JSON;
they hold no behaviour beyond small derived views.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

TRANSCRIPT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Message:
    role: str  # system, user or assistant
    content: str


@dataclass(frozen=True)
class Sample:
    """One dataset record: a conversation to continue and, optionally, the expected answer."""

    id: str
    messages: tuple[Message, ...]
    reference: Optional[str] = None


@dataclass
class ResolvedModel:
    """What a model reference points at, read from its files without loading any weights."""

    reference: str  # as the user wrote it
    kind: str  # alias or path
    path: str  # the local folder
    architecture: str
    model_type: str
    context_length: int
    has_chat_template: bool
    has_generation_config: bool
    weight_files: list[str]
    weight_bytes: int
    parameters: int  # counted from the safetensors headers
    weights_dtype: str  # the dtype most weights are stored in
    weights_digest: str  # sha256 over the weight files' contents: same digest, same weights


@dataclass
class RuntimePlan:
    """Every decision taken before weights load, and the checks that justified it."""

    model: ResolvedModel
    backend: str
    device: str
    dtype: str
    batch_size: int
    num_samples: int
    longest_prompt_tokens: int
    max_new_tokens: int
    context_length: int
    generation: dict[str, Any]  # the effective generation settings
    estimated_weight_bytes: int
    checks: list[str] = field(default_factory=list)  # what was verified, in words
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedRuntime:
    """A tokenizer and model in memory, ready to generate as the plan says."""

    plan: RuntimePlan
    tokenizer: Any
    model: Any


@dataclass
class TranscriptRecord:
    """One line of transcript.jsonl: a sample, what the model said, and how it went."""

    sample_id: str
    messages: list[dict[str, str]]
    response: str
    reference: Optional[str]
    score: Optional[float]  # 1.0 exact match, 0.0 miss, None without a reference
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop (end of turn or a stop string) or length (max_new_tokens reached)
    latency_s: float  # wall time of the batch this sample was generated in
    batch: int
    config_hash: str
    status: str = "ok"
    schema_version: int = TRANSCRIPT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Summary:
    """What a run amounted to: the numbers written to summary.json and MLflow."""

    num_samples: int
    num_scored: int
    accuracy: Optional[float]
    correct: int
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float  # completion tokens / execute-stage seconds
    latency_p50_s: float
    latency_p95_s: float
    stage_seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The summary as flat MLflow metrics (stage timings are logged as they happen)."""
        metrics = {
            "samples": float(self.num_samples),
            "correct": float(self.correct),
            "prompt_tokens": float(self.prompt_tokens),
            "completion_tokens": float(self.completion_tokens),
            "tokens_per_second": self.tokens_per_second,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
        }
        if self.accuracy is not None:
            metrics["accuracy"] = self.accuracy
        return metrics
