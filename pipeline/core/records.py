"""The typed records that flow between stages.

resolve -> ResolvedModel, plan -> RuntimePlan, load -> LoadedRuntime, execute -> TranscriptRecord
(one per sample; score fills in its score and extracted answer), summarize -> Summary. Records
are plain dataclasses that serialise to JSON; they hold no behaviour beyond small derived views.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

TRANSCRIPT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MediaPart:
    """A non-text part of a message: an image or audio clip, by path, data URL or URL.

    The fields after `source` are filled in when the part is checked (pipeline.data.media.check_part)."""

    kind: str  # image or audio
    source: str  # as written: a path, a data: URL or an http(s) URL
    path: Optional[str] = None  # the checked local file, resolved
    sha256: Optional[str] = None  # of the bytes (a file's or a data URL's)
    size_bytes: int = 0
    mime: Optional[str] = None  # a data URL's media type
    width: Optional[int] = None  # an image's, as decoded
    height: Optional[int] = None
    seconds: Optional[float] = None  # an audio clip's length


@dataclass(frozen=True)
class ToolCall:
    """One call a model asked for: a tool's name and its arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Message:
    role: str  # system, user, assistant, or tool (a tool's result)
    content: str  # the text parts, joined
    media: tuple[MediaPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant message's calls
    name: Optional[str] = None  # a tool message: the tool that answered


@dataclass(frozen=True)
class Turn:
    """One scripted user turn of a multi-turn conversation."""

    content: str
    reference: Optional[str] = None


@dataclass(frozen=True)
class Sample:
    """One dataset record: a conversation to continue and, optionally, the expected answer.

    A scripted conversation has `turns`: each is sent after the history so far (`messages`, then
    the earlier turns and the model's own answers to them) and answered on its own."""

    id: str
    messages: tuple[Message, ...]
    reference: Optional[str] = None
    turns: tuple[Turn, ...] = ()
    choices: tuple[str, ...] = ()  # dataset.kind=multiple_choice: the continuations scored after the prompt
    answer: Optional[int] = None  # ... and the index of the right one


@dataclass(frozen=True)
class ModelShape:
    """The sizes the memory estimate needs, from config.json; 0 where it does not say."""

    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int


@dataclass
class ResolvedModel:
    """What a model reference points at, read from its files without loading any weights."""

    reference: str  # as the user wrote it
    kind: str  # local-path, models-dir, hf-cache, hf-download, or served (by a server backend: no local files)
    alias: Optional[str]  # the alias the reference went through, if any
    path: str  # the local folder ("" for a served model)
    repo_id: Optional[str]  # for Hugging Face references
    revision: Optional[str]  # as asked (branch, tag or commit); None: main
    commit: Optional[str]  # the Hugging Face snapshot's commit
    architecture: str
    model_type: str
    modalities: list[str]  # text, plus image/audio for multimodal models
    context_length: int  # 0: config.json states none
    shape: ModelShape
    has_tokenizer_json: bool
    has_chat_template: bool
    has_generation_config: bool
    weights_format: str  # safetensors, or pickle when allowed
    weight_files: list[str]
    weight_bytes: int  # on disk
    parameters: int  # from the safetensors headers (estimated from file sizes for pickle weights)
    parameters_exact: bool
    weights_dtype: str  # the dtype most weights are stored in
    weights_digest: Optional[str]  # sha256 over the weight files' contents: same digest, same weights; None: served
    endpoint: Optional[str] = None  # a served model: the server's base URL, credentials masked


@dataclass
class MemoryEstimate:
    """What a run needs on its device, against what the device has free."""

    device: str
    weights_bytes: int  # the weights that stay on the device (all of them unless offloading)
    kv_cache_bytes: int  # batch x sequence_tokens x kv_bytes_per_token
    kv_bytes_per_token: int  # keys and values of one token across all layers
    activation_bytes: int  # the prefill's largest transient tensors and the logits
    total_bytes: int
    batch_size: int
    sequence_tokens: int  # longest prompt + max_new_tokens
    available_bytes: Optional[int]  # free on the device, or runtime.memory_limit; None: unknown
    available_source: str
    margin: float  # fraction of available_bytes kept free
    usable_bytes: Optional[int]
    fits: bool


@dataclass
class RuntimePlan:
    """Every decision taken before weights load, why it was taken, and the checks behind it: what every backend
    kind decides. A kind's own choices are its `backend_options` (each with its reason in `reasons`) and its view
    of the plan, `backend_plan`."""

    model: ResolvedModel
    backend: str
    device: str  # where the model runs: cpu, cuda:0, ...; "server" when it runs behind one
    dtype: str
    batch_size: int
    memory: Optional[MemoryEstimate]  # what the model needs where it runs; None where it is not ours to know (a server)
    reasons: dict[str, str]  # decision -> why
    num_samples: int
    longest_prompt_tokens: int
    longest_prompt_sample: str
    max_new_tokens: int
    context_length: int
    truncation: str  # error or left
    truncated_samples: list[str]  # ids whose prompt is cut from the left to fit the context
    generation: dict[str, Any]  # the effective generation settings
    generation_sources: dict[str, str]  # setting -> where its value came from
    checks: list[str] = field(default_factory=list)  # what was verified, in words
    warnings: list[str] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)  # the JSON schemas of the tools offered to the model
    # the kind's own options, as it applies them: transformers' attention, offload, compile, ...; vLLM's engine options
    backend_options: dict[str, Any] = field(default_factory=dict)
    # the backend kind's own plan (pipeline.backends.base.BackendPlan as a dict: identity (a server's masked base
    # URL and what it reports), capabilities, its options with reasons, token source), whatever the kind
    backend_plan: dict[str, Any] = field(default_factory=dict)
    thinking: dict[str, Any] = field(default_factory=dict)  # pipeline.core.thinking.ThinkingPlan as a dict
    judge: dict[str, Any] = field(default_factory=dict)  # scoring=judge: the judge's plan (pipeline.stages.judge)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedRuntime:
    """A tokenizer and model in memory, ready to generate as the plan says."""

    plan: RuntimePlan
    tokenizer: Any
    model: Any
    chat_template: Any = None  # a ChatTemplate (pipeline.data.chat_template); None: plain text
    processor: Any = None  # a multimodal model's processor (images, audio -> model inputs); None: text only


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, in order: dataclasses.fields() per record was a tenth of the runner's own
    time per sample (100,000 records are written once and read twice)."""
    return tuple(f.name for f in fields(cls))


@functools.cache
def _field_set(cls: type) -> frozenset[str]:
    return frozenset(_field_names(cls))


@dataclass
class TranscriptRecord:
    """One line of transcript.jsonl: a sample, what the model said, and how it went."""

    sample_id: str  # the dataset id; <id>#<turn> for a turn of a scripted conversation
    sample_index: int  # which of generation.num_samples completions of this sample (0 when one)
    messages: list[dict[str, Any]]  # the conversation the model was given ([] for tool results: no model ran)
    response: str
    reference: Optional[str]
    score: Optional[float]  # by dataset.scorer: 1.0 pass, 0.0 miss (or a user scorer's number); None: not scored
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop (end of turn or a stop string) or length (max_new_tokens reached)
    ttft_s: float  # time to first token: the end of its batch's prefill
    latency_s: float  # from the start of its batch until this sample's last token
    batch: int
    config_hash: str
    truncated: bool = False  # the prompt was cut from the left to fit the model's context
    conversation_id: Optional[str] = None  # the dataset id of the conversation a turn belongs to
    turn: Optional[int] = None  # the turn's index in its conversation, from 0
    kind: str = "answer"  # answer (scored), or a step on the way: tool_call, tool_result, tool_error
    step: int = 0  # this record's place among its answer's records: tool steps first, the answer last
    tools: list[str] = field(default_factory=list)  # the tools offered to the model for this generation
    tool: Optional[dict[str, Any]] = None  # tool_call: {calls}; tool_result/tool_error: {name, arguments, seconds}
    tool_budget_spent: Optional[str] = None  # round_trips or seconds: the answer was asked for without tools
    status: str = "ok"  # ok, or error: the sample could not be completed (see error)
    error: Optional[str] = None
    started_at: Optional[float] = None  # unix seconds when its batch started (a tool step: when the tool ran)
    extracted: Optional[str] = None  # the answer the scorer was given (the score stage's; None until scored)
    # dataset.kind=multiple_choice: {loglikelihoods, is_greedy, tokens, chars, bytes, prediction, answer};
    # perplexity: {loglikelihood, tokens, words, bytes}
    loglikelihood: Optional[dict[str, Any]] = None
    schema_version: int = TRANSCRIPT_SCHEMA_VERSION
    reasoning: str = ""  # the model's thinking, kept apart from `response` (the answer alone)
    reasoning_tokens: int = 0
    answer_tokens: int = 0  # completion_tokens without the reasoning (and the thinking tags)
    reasoning_truncated: bool = False  # the thinking never closed: no answer, scored as none
    continuations: int = 0  # generation.continue_on_length: the answer is this many continuations longer
    cached: bool = False  # read from the response cache (cache.enabled), not generated now; timings as first generated
    # scoring=judge: {name, grade, said, reason, error, reply, prompt_tokens, completion_tokens, latency_s}
    # (pipeline.stages.judge); None: not judged
    judge: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        # shallow: its values are already JSON-shaped, and asdict's deep copy cost more than a batch of the demo model
        return {name: getattr(self, name) for name in _field_names(type(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TranscriptRecord":
        """A record read back. The one place that says what a field missing from an older record meant
        (OLD_RECORD_DEFAULTS and the fields' own defaults); keys this version does not know are left out."""
        known = _field_set(cls)
        values = {**OLD_RECORD_DEFAULTS, **{k: v for k, v in data.items() if k in known}}
        values.setdefault("sample_id", "?")
        values.setdefault("answer_tokens", values["completion_tokens"])  # before reasoning was counted apart
        return cls(**values)

    @property
    def is_answer(self) -> bool:
        """An answer (scored), not a tool step on the way to one."""
        return self.kind == "answer"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# What the fields a transcript record must have meant when an older version did not write them
OLD_RECORD_DEFAULTS: dict[str, Any] = {
    "sample_index": 0, "messages": [], "response": "", "reference": None, "score": None, "prompt_tokens": 0,
    "completion_tokens": 0, "finish_reason": "stop", "ttft_s": 0.0, "latency_s": 0.0, "batch": 0, "config_hash": "",
    "schema_version": 0,
}


# the judge's summary figures logged to MLflow as <judge name>/<figure>
JUDGE_METRICS = ("mean", "ci_low", "ci_high", "graded", "errors", "agreement", "kappa", "prompt_tokens",
                 "completion_tokens")


@dataclass
class Summary:
    """What a run amounted to: the numbers written to summary.json and MLflow."""

    num_samples: int
    num_scored: int
    num_errors: int  # records that could not be completed (status error); scored as wrong when they had a reference
    accuracy: Optional[float]  # the mean score of the answers that have one (whatever the scorer)
    correct: int  # answers with full marks (score 1)
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float  # completion tokens / execute-stage seconds
    latency_p50_s: float
    latency_p95_s: float
    ttft_p50_s: float  # median time to first token
    stage_seconds: dict[str, float]
    tool_calls: int = 0  # calls the model made (tool_result and tool_error records)
    tool_errors: int = 0  # of which failed: unknown tool, bad arguments, exception, timeout, unparsable
    scorer: str = ""  # dataset.scorer's name, or the user function's dotted path
    accuracy_ci_low: Optional[float] = None  # 95% interval of accuracy, over samples (not completions)
    accuracy_ci_high: Optional[float] = None
    accuracy_ci_method: str = ""  # wilson (every score 0 or 1) or bootstrap (seeded, 10,000 resamples)
    accuracy_ci_samples: int = 0  # the samples the interval is over
    pass_at_k: dict[str, float] = field(default_factory=dict)  # "k" -> unbiased pass@k, with num_samples > 1
    prefill_tokens_per_second: float = 0.0  # prompt tokens / the batches' prefill seconds
    decode_tokens_per_second: float = 0.0  # tokens after the first / the batches' decode seconds
    ttft_p95_s: float = 0.0
    peak_memory_bytes: Optional[int] = None  # see peak_memory_kind
    peak_memory_kind: str = ""  # cuda_max_allocated (GPU) or process_peak_rss (the whole process, CPU runs)
    # reasoning models: over the answers (0 where the model did not think)
    reasoning_tokens_mean: float = 0.0
    reasoning_tokens_p95: float = 0.0
    reasoning_truncated_share: float = 0.0  # answers whose thinking never closed (scored as no answer)
    answer_tokens_mean: float = 0.0
    # scored by log-likelihood (pipeline.scoring.choices): acc, acc_norm, acc_bytes with _ci_low/_ci_high, or
    # word_perplexity, byte_perplexity, bits_per_byte
    likelihood: dict[str, float] = field(default_factory=dict)
    cache_hits: int = 0  # model generations (answers, tool calls) or log-likelihoods read from the response cache
    # scoring=judge (pipeline.stages.judge_summary): its name and model, mean grade with its 95% interval,
    # answers graded and failed, and its agreement with dataset.scorer (share agreeing, Cohen's kappa)
    judge: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The summary as flat MLflow metrics, the scores first: MLflow's run views show a run's metrics in
        the order they were first logged (stage timings are logged after these)."""
        scores = {"accuracy": self.accuracy, "accuracy_ci_low": self.accuracy_ci_low,
                  "accuracy_ci_high": self.accuracy_ci_high,
                  **{f"pass_at_{k}": value for k, value in self.pass_at_k.items()}, **self.likelihood,
                  **{f"{self.judge.get('name')}/{key}": value for key, value in self.judge.items() if key in JUDGE_METRICS}}
        metrics = {key: float(value) for key, value in scores.items() if value is not None}
        metrics.update({
            "samples": float(self.num_samples),
            "errors": float(self.num_errors),
            "correct": float(self.correct),
            "prompt_tokens": float(self.prompt_tokens),
            "completion_tokens": float(self.completion_tokens),
            "tokens_per_second": self.tokens_per_second,
            "latency_p50_s": self.latency_p50_s,
            "latency_p95_s": self.latency_p95_s,
            "ttft_p50_s": self.ttft_p50_s,
            "tool_calls": float(self.tool_calls),
            "tool_errors": float(self.tool_errors),
            "prefill_tokens_per_second": self.prefill_tokens_per_second,
            "decode_tokens_per_second": self.decode_tokens_per_second,
            "ttft_p95_s": self.ttft_p95_s,
            "reasoning_tokens_mean": self.reasoning_tokens_mean,
            "reasoning_tokens_p95": self.reasoning_tokens_p95,
            "reasoning_truncated_share": self.reasoning_truncated_share,
            "answer_tokens_mean": self.answer_tokens_mean,
            "cache_hits": float(self.cache_hits),
        })
        if self.peak_memory_bytes is not None:
            metrics["peak_memory_bytes"] = float(self.peak_memory_bytes)
        return metrics
