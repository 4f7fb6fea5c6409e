"""Typed configuration: the dataclass schemas behind `conf/`, and their validation.

Hydra composes YAML onto these schemas (registered in Hydra's ConfigStore), so an unknown key or
a wrong type is refused by OmegaConf with the key's full name. OmegaConf does no range checks:
those live in each schema's `__post_init__`, which runs when `to_config` turns the composed
DictConfig into plain dataclasses. Nothing past the entry point sees a DictConfig.

This module does not read files or load anything; it only describes and checks settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import typing
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pipeline.core.errors import ConfigError, UserError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # pipeline/
ASSETS_DIR = PACKAGE_DIR / "assets"
# the project's Hydra configs: conf/ at the top of a checkout (or an editable install); a wheel carries them
# as pipeline/conf (setup.py)
CONF_DIR = PACKAGE_DIR / "conf" if (PACKAGE_DIR / "conf").is_dir() else PACKAGE_DIR.parent / "conf"
STAGES = ("resolve", "plan", "load", "execute", "score", "summarize")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "eager", "sdpa", "flash_attention_2", "flex_attention")
OFFLOAD = ("auto", "cpu", "disk", "none")
TRUNCATION = ("error", "left")
SCORERS = ("exact_match", "contains", "regex", "numeric")
VERDICTS = ("grade", "scale", "json")  # how a judge's reply is read (pipeline.scoring.verdicts)
DATASET_KINDS = ("generate", "multiple_choice", "perplexity")
FEWSHOT_STYLES = ("inline", "turns")
THINKING = ("auto", "on", "off")
EFFORTS = ("low", "medium", "high")
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, value, "one of " + ", ".join(choices))


@dataclass
class RuntimeConfig:
    """Which model runs, where and how."""

    model: str = "demo"  # an alias, a local folder, a name under models_dir, or a Hugging Face repo id[@revision]
    aliases: Dict[str, str] = field(default_factory=dict)  # name -> any other reference (conf/config.yaml has the built-ins)
    models_dir: str = "models"  # folder of local models, looked up by name (relative to the launch folder)
    allow_download: bool = False  # fetch a repo id missing from the Hugging Face cache (needs network)
    device: str = "auto"  # auto picks cuda > mps > cpu; or cpu, cuda, cuda:N, mps
    dtype: str = "auto"  # auto: bf16/fp16 on accelerators, fp32 on CPU
    attn_implementation: str = "auto"  # auto: sdpa (flash_attention_2 when installed on CUDA); or eager, sdpa, ...
    batch_size: Any = 16  # prompts generated together: an integer >= 1, or auto (the largest that fits)
    max_batch_size: int = 64  # the ceiling for batch_size=auto
    memory_limit: Optional[str] = None  # memory the run may use on the device, e.g. 6GiB; null: what is free now
    memory_margin: float = 0.15  # fraction of the usable memory kept free for what the estimate leaves out
    offload: str = "auto"  # weights that do not fit the device: auto (to CPU, then disk), cpu, disk, or none (refuse)
    allow_pickle: bool = False  # accept .bin/.pt weights, which can run code when loaded
    trust_remote_code: bool = False  # never run code shipped with a model unless asked
    reuse: bool = True  # keep the loaded model for the next job of this process while its load settings match
    compile: Any = "auto"  # torch.compile the decoding step: true, false, or auto (the plan decides: CUDA, long runs)
    cache_implementation: Optional[str] = None  # KV cache: null (static when compiling, else dynamic), dynamic, static
    continuous_batching: bool = False  # transformers' generate_batch (paged attention): greedy, no stop strings, no tools
    # CPU threads torch uses in this process; null: the cores this process may run on (a share of a busy machine
    # is what it gets: more threads than cores made runs crawl; pipeline.backends.transformers.threads)
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        _check(bool(self.model.strip()), "runtime.model", self.model, "a non-empty model reference")
        base_device = self.device.split(":", 1)[0]
        _check_choice("runtime.device", base_device, DEVICES)
        if ":" in self.device:
            index = self.device.split(":", 1)[1]
            _check(base_device == "cuda" and index.isdigit(), "runtime.device", self.device,
                   "an index only after cuda, as in cuda:0")
        _check_choice("runtime.dtype", self.dtype, DTYPES)
        _check_choice("runtime.attn_implementation", self.attn_implementation, ATTENTION)
        _check(self.batch_size == "auto" or (isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
                                             and self.batch_size >= 1),
               "runtime.batch_size", self.batch_size, "an integer >= 1 or auto")
        _check(self.max_batch_size >= 1, "runtime.max_batch_size", self.max_batch_size, "an integer >= 1")
        if self.memory_limit is not None:
            _check(parse_bytes(self.memory_limit) is not None, "runtime.memory_limit", self.memory_limit,
                   "null or a size such as 512MiB, 6GiB or 8GB")
        _check(0 <= self.memory_margin < 1, "runtime.memory_margin", self.memory_margin, "a fraction in [0, 1)")
        _check_choice("runtime.offload", self.offload, OFFLOAD)
        _check(self.compile in (True, False, "auto"), "runtime.compile", self.compile, "true, false or auto")
        _check(self.cache_implementation in (None, "dynamic", "static"), "runtime.cache_implementation",
               self.cache_implementation, "null, dynamic or static")
        _check(self.threads is None or self.threads >= 1, "runtime.threads", self.threads, "null or an integer >= 1")


class BackendConfig:
    """Which backend generates (`backend=transformers`, the default, `backend=openai`, `backend=vllm`, ...) and
    its own settings as the config gives them (`backend.<key>`; a null: not set, the kind's default applies).

    The keys are each kind's own (pipeline.backends.registry checks them against the kind's settings
    dataclass, before anything loads): this section is a plain map in the schema, so a new kind adds
    no field here. The in-process model's settings stay under runtime.* (device, dtype, ...)."""

    def __init__(self, name: str = "transformers", values: Optional[Dict[str, Any]] = None, **given: Any) -> None:
        self.name = name
        self.values: Dict[str, Any] = {**(values or {}), **given}
        _check(isinstance(name, str) and bool(name.strip()), "backend.name", name, "a backend kind's name")

    @classmethod
    def from_dict(cls, data: Any) -> "BackendConfig":
        if isinstance(data, BackendConfig):
            return data
        values = dict(data or {})
        name = values.pop("name", "transformers")
        return cls(name, {key: dict(value) if isinstance(value, Mapping) else value for key, value in values.items()})

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, **self.values}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackendConfig) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"BackendConfig({self.to_dict()!r})"


# runtime.* settings that only some backend kinds read (each kind lists its own: pipeline.backends.registry), with the
# value that leaves the choice to the backend: where the chosen kind does not read one, setting it is a mistake
# (what would it change?)
IN_PROCESS_RUNTIME = {"device": "auto", "dtype": "auto", "attn_implementation": "auto", "offload": "auto",
                      "compile": "auto", "cache_implementation": None, "continuous_batching": False,
                      "memory_limit": None, "memory_margin": 0.15, "max_batch_size": 64, "allow_download": False,
                      "allow_pickle": False, "trust_remote_code": False}


class OtherBackendSetting(ConfigError):
    """A setting that only another backend reads: "backend.base_url is a setting of backend=openai, ..."."""

    def __init__(self, key: str, owner: str, chosen: str, fix: str) -> None:
        self.key, self.value, self.allowed = key, None, fix
        UserError.__init__(self, f"{key} is a setting of backend={owner}, not backend={chosen}: {fix}")


@dataclass
class GenerationConfig:
    """How tokens are chosen; maps onto transformers' GenerationConfig.

    A null setting is not chosen here: the model's generation_config.json decides, else
    transformers' default. The plan records which source each effective value came from."""

    temperature: float = 0.0  # 0 means greedy decoding
    top_p: Optional[float] = None  # nucleus sampling, in (0, 1]
    top_k: Optional[int] = None  # keep the k likeliest tokens; 0 turns top-k filtering off
    min_p: Optional[float] = None  # drop tokens below min_p x the likeliest token's probability, in [0, 1)
    repetition_penalty: Optional[float] = None  # 1.0 is none
    max_new_tokens: int = 8  # upper bound on generated tokens per sample
    num_samples: int = 1  # completions per prompt (for pass@k); each is seeded on its own
    seed: int = 0  # seeds sampling: the same seed and sample give the same output, whatever the batch
    stop: List[str] = field(default_factory=list)  # generation ends at any of these strings
    # reasoning models (pipeline.core.thinking): the plan says how the model's template switches thinking
    thinking: str = "auto"  # auto (the template's default), on, off
    reasoning_effort: Optional[str] = None  # low, medium, high: for templates that read reasoning_effort (gpt-oss)
    thinking_budget: Optional[int] = None  # at most this many reasoning tokens per answer, then the thinking is closed
    thinking_wrapup: str = ""  # text forced before the closing tag when the budget ends the thinking
    continue_on_length: int = 0  # an answer cut by max_new_tokens is continued up to this many times

    def __post_init__(self) -> None:
        # YAML 1.1 reads a bare on/off as a boolean, which the str field then holds as "True"/"False"
        self.thinking = {"True": "on", "False": "off", "true": "on", "false": "off"}.get(str(self.thinking),
                                                                                       self.thinking)
        _check_choice("generation.thinking", self.thinking, THINKING)
        _check(self.reasoning_effort is None or self.reasoning_effort in EFFORTS, "generation.reasoning_effort",
               self.reasoning_effort, "null or one of " + ", ".join(EFFORTS))
        _check(self.thinking_budget is None or (isinstance(self.thinking_budget, int) and self.thinking_budget >= 0),
               "generation.thinking_budget", self.thinking_budget, "null (no budget) or an integer >= 0")
        _check(self.continue_on_length >= 0, "generation.continue_on_length", self.continue_on_length,
               "an integer >= 0")
        _check(not self.thinking_wrapup or self.thinking_budget is not None, "generation.thinking_wrapup",
               self.thinking_wrapup, "empty unless generation.thinking_budget is set")
        _check(self.temperature >= 0, "generation.temperature", self.temperature, "a number >= 0 (0 = greedy)")
        _check(self.top_p is None or 0 < self.top_p <= 1, "generation.top_p", self.top_p, "null or a number in (0, 1]")
        _check(self.top_k is None or self.top_k >= 0, "generation.top_k", self.top_k, "null or an integer >= 0 (0 = off)")
        _check(self.min_p is None or 0 <= self.min_p < 1, "generation.min_p", self.min_p, "null or a number in [0, 1)")
        _check(self.repetition_penalty is None or self.repetition_penalty > 0, "generation.repetition_penalty",
               self.repetition_penalty, "null or a number > 0 (1.0 = none)")
        _check(self.max_new_tokens >= 1, "generation.max_new_tokens", self.max_new_tokens, "an integer >= 1")
        _check(self.num_samples >= 1, "generation.num_samples", self.num_samples, "an integer >= 1")
        _check(self.seed >= 0, "generation.seed", self.seed, "an integer >= 0")
        for stop in self.stop:
            _check(stop != "", "generation.stop", self.stop, "non-empty strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class ToolBudgetConfig:
    """How far a tool-using answer may go before the model must answer without tools."""

    max_round_trips: int = 4  # generate -> tools -> generate cycles per answer
    seconds_per_turn: float = 30.0  # the answer's own generation and tool seconds (not waits for other batches)
    seconds_per_call: float = 10.0  # one tool call; past it the model is told the tool timed out

    def __post_init__(self) -> None:
        _check(self.max_round_trips >= 1, "session.tool_budget.max_round_trips", self.max_round_trips, "an integer >= 1")
        _check(self.seconds_per_turn > 0, "session.tool_budget.seconds_per_turn", self.seconds_per_turn, "a number > 0")
        _check(self.seconds_per_call > 0, "session.tool_budget.seconds_per_call", self.seconds_per_call, "a number > 0")


@dataclass
class SessionConfig:
    """How each sample becomes a conversation for the model."""

    name: str = "default"
    system_prompt: Optional[str] = None  # prepended as a system message; null for none
    chat_template: bool = True  # false: the messages' contents are joined into one raw text prompt
    template_args: Dict[str, Any] = field(default_factory=dict)  # extra chat template variables, e.g. enable_thinking
    prefill: str = ""  # the start of the assistant's answer; the model continues it
    history: Optional[str] = None  # a JSON file of messages put before every sample (e.g. a saved conversation)
    autosave: bool = False  # save each scripted conversation after every turn to <run dir>/conversations/
    tools: List[Any] = field(default_factory=list)  # callables the model may call: [{_target_: pipeline.answering.demo_tools.add}]
    tool_budget: ToolBudgetConfig = field(default_factory=ToolBudgetConfig)
    skip_summarization: bool = False  # true: a tool's result is the answer, no final model turn after it
    truncation: str = "error"  # a prompt longer than the context: error, or left (keep its end; flagged per sample)

    def __post_init__(self) -> None:
        _check_choice("session.truncation", self.truncation, TRUNCATION)
        for index, tool in enumerate(self.tools):
            _check(isinstance(tool, dict) and isinstance(tool.get("_target_"), str), f"session.tools[{index}]", tool,
                   "{_target_: a dotted path to a Python function}")


@dataclass
class ScorerConfig:
    """How a response is scored against its reference (pipeline.scoring.scorers does the scoring)."""

    name: str = "exact_match"  # exact_match, contains, regex or numeric; ignored when _target_ is set
    strip: bool = True  # ignore white space around the text
    ignore_case: bool = False
    collapse_whitespace: bool = False  # runs of white space count as one space
    ignore_punctuation: bool = False  # drop punctuation before comparing ("68." matches "68")
    pattern: Optional[str] = None  # regex: must be found in the response; its first group, if any, is the answer
    abs_tol: float = 0.0  # numeric: |answer - reference| <= abs_tol passes ...
    rel_tol: float = 0.0  # ... or <= rel_tol x |reference|; both 0: the numbers must be equal
    _target_: Optional[str] = None  # your own function(response, reference) -> float | bool | None, dotted path
    options: Dict[str, Any] = field(default_factory=dict)  # keyword arguments bound to the _target_ function
    extract: Optional[str] = None  # before scoring: last_number, or a regex whose first group is the answer

    def __post_init__(self) -> None:
        if self.extract is not None and self.extract != "last_number":
            try:
                groups = re.compile(self.extract).groups
            except re.error as error:
                raise ConfigError("dataset.scorer.extract", self.extract, f"last_number or a valid regular expression ({error})")
            _check(groups >= 1, "dataset.scorer.extract", self.extract,
                   "last_number or a regular expression with a group, e.g. '#### (\\S+)'")
        if self._target_ is not None:
            _check(bool(re.fullmatch(r"[\w.]+\.\w+", self._target_)), "dataset.scorer._target_", self._target_,
                   "a dotted path to a function, such as mypackage.scorers.judge")
        else:
            _check_choice("dataset.scorer.name", self.name, SCORERS)
            _check(not self.options, "dataset.scorer.options", self.options, "{} unless _target_ is set")
        if self.pattern is not None:
            _check(self.name in ("regex", "numeric") and self._target_ is None, "dataset.scorer.pattern",
                   self.pattern, "null unless dataset.scorer.name is regex or numeric")
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ConfigError("dataset.scorer.pattern", self.pattern, f"a valid regular expression ({error})")
        _check(self.name != "regex" or self._target_ is not None or bool(self.pattern), "dataset.scorer.pattern",
               self.pattern, "a regular expression when dataset.scorer.name=regex")
        for key in ("abs_tol", "rel_tol"):
            value = getattr(self, key)
            _check(value >= 0 and value == value, f"dataset.scorer.{key}", value, "a number >= 0")

    @property
    def label(self) -> str:
        """The scorer's name as summaries show it: the built-in's name, or your function's dotted path."""
        return self._target_ or self.name


# What the judge is shown by default: the shape the demo judge (judge-demo) was trained on; a real judge
# model reads a rubric too (scoring.judge.rubric), put before it.
JUDGE_PROMPT = ("{% if rubric %}{{ rubric }}\n{% endif %}Question: {{ question }}\nReference: {{ reference }}\n"
                "Answer: {{ answer }}\nVerdict:")


@dataclass
class JudgeConfig:
    """A model that grades each answer (pipeline.stages.judge): which model, on which backend, shown what,
    and how its reply is read. `model: null` (scoring=default): no judge."""

    model: Optional[str] = None  # a model reference as for runtime.model (alias, folder, repo id), or a served id
    name: str = "judge"  # what its grades are called: the MLflow feedback, the summary
    backend: str = "transformers"  # a backend kind: transformers (in this process), openai (served: base_url below), ...
    base_url: Optional[str] = None  # backend=openai: where the judge is served, e.g. http://127.0.0.1:8000/v1
    api_key_env: Optional[str] = None  # backend=openai: the NAME of the variable holding its key (never the key)
    timeout_s: Optional[float] = None  # backend=openai: per request
    max_concurrency: Optional[int] = None  # backend=openai: requests in flight at once
    device: str = "auto"  # in process: as runtime.device
    dtype: str = "auto"  # in process: as runtime.dtype
    batch_size: int = 16  # judge prompts generated together
    prompt: str = JUDGE_PROMPT  # Jinja over question, answer, reference, reasoning, extracted, rubric, sample
    rubric: Optional[str] = None  # what a good answer is, in words; the prompt shows it as {{ rubric }}
    system_prompt: Optional[str] = None
    chat_template: bool = True  # false: the prompt is sent as plain text
    verdict: str = "grade"  # grade (a grade word), scale (a number), json (an object with a grade and a reason)
    grades: Dict[str, float] = field(default_factory=lambda: {"correct": 1.0, "incorrect": 0.0})  # word -> grade
    scale_min: float = 1.0  # verdict=scale: the lowest and highest number; a grade is scaled into [0, 1]
    scale_max: float = 10.0
    grade_key: str = "grade"  # verdict=json: the keys of the grade and the reason
    reason_key: str = "reason"
    samples: int = 1  # judgements per answer; several: the majority grade (a tie: the lower)
    temperature: float = 0.0  # 0: greedy (the same grades every run); several samples need > 0
    top_p: Optional[float] = None
    max_new_tokens: int = 48
    seed: int = 0  # seeds a sampling judge: the same seed gives the same grades

    def __post_init__(self) -> None:
        if self.model is not None:
            _check(bool(self.model.strip()), "scoring.judge.model", self.model, "null (no judge) or a model reference")
        _check(bool(self.name.strip()) and "/" not in self.name, "scoring.judge.name", self.name,
               "a non-empty name without /")
        _check_choice("scoring.judge.verdict", self.verdict, VERDICTS)
        _check(bool(self.grades), "scoring.judge.grades", self.grades, "at least one grade word")
        for word in self.grades:
            _check(bool(re.fullmatch(r"\w+", word)), "scoring.judge.grades", word, "single words as grade names")
        _check(self.scale_max > self.scale_min, "scoring.judge.scale_max", self.scale_max,
               f"a number above scoring.judge.scale_min={self.scale_min}")
        _check(self.samples >= 1, "scoring.judge.samples", self.samples, "an integer >= 1")
        _check(self.samples == 1 or self.temperature > 0, "scoring.judge.samples", self.samples,
               "1 with a greedy judge (every judgement would be the same); set scoring.judge.temperature > 0")
        _check(self.batch_size >= 1, "scoring.judge.batch_size", self.batch_size, "an integer >= 1")
        self.settings()  # backend, device, generation: refused with their scoring.judge.* names

    @property
    def enabled(self) -> bool:
        return self.model is not None

    def settings(self) -> tuple["RuntimeConfig", "BackendConfig", "GenerationConfig"]:
        """The judge as the run's own sections would say it (its model in runtime, its server in backend);
        a ConfigError names the scoring.judge.* key. Its backend settings are checked against their kind with
        the run's (pipeline.backends.registry.check)."""
        try:
            server = {key: getattr(self, key) for key in ("base_url", "api_key_env", "timeout_s", "max_concurrency")}
            backend = BackendConfig(self.backend, {key: value for key, value in server.items() if value is not None})
            runtime = RuntimeConfig(model=self.model or "none", device=self.device, dtype=self.dtype,
                                    batch_size=self.batch_size)
            generation = GenerationConfig(temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                                          max_new_tokens=self.max_new_tokens, num_samples=self.samples)
        except ConfigError as error:
            key = re.sub(r"^(backend\.name|backend|runtime|generation)\.?", "", error.key) or "backend"
            raise ConfigError(f"scoring.judge.{key}", error.value, error.allowed) from None
        return runtime, backend, generation


@dataclass
class ScoringConfig:
    """Scorers beyond dataset.scorer (which always runs): a judge model (scoring=judge)."""

    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class FieldsConfig:
    """Which field of a record holds each part of a sample (a dotted path reaches into an object: choices.text)."""

    id: str = "id"  # absent from a record: its row number
    prompt: str = "prompt"  # the prompt, or a multiple-choice question's context
    reference: str = "reference"
    choices: str = "choices"  # multiple choice: a list of strings, or {text: [...], label: [...]}
    answer: str = "answer"  # multiple choice: the right choice's index, label (A, B, ...) or text

    def __post_init__(self) -> None:
        for key in ("id", "prompt", "reference", "choices", "answer"):
            _check(bool(getattr(self, key).strip()), f"dataset.fields.{key}", getattr(self, key), "a field name")


@dataclass
class TemplateConfig:
    """Jinja templates over a record's fields; null: the mapped field as it is."""

    prompt: Optional[str] = None  # e.g. "Question: {{ question }}\nAnswer:"
    reference: Optional[str] = None  # e.g. "{{ answer.split('####')[-1] | trim }}"


@dataclass
class FewshotConfig:
    """Worked examples put before each prompt, drawn for each sample from its id and the seed."""

    k: int = 0  # examples per sample; 0: none
    split: Optional[str] = None  # the split they come from (Hub datasets: e.g. train); null: the dataset's own records
    path: Optional[str] = None  # or another file (read with the same fields and templates)
    seed: int = 1234
    style: str = "inline"  # inline: one prompt, examples first; turns: earlier user/assistant turns (chat)
    delimiter: str = "\n\n"  # between examples, inline

    def __post_init__(self) -> None:
        _check(self.k >= 0, "dataset.fewshot.k", self.k, "an integer >= 0")
        _check_choice("dataset.fewshot.style", self.style, FEWSHOT_STYLES)


@dataclass
class DatasetConfig:
    """Where the samples come from (a JSONL, JSON, CSV or Parquet file, or a Hugging Face dataset in the local
    cache), how records map onto samples, and how answers are scored (pipeline.data)."""

    # how MLflow and config.json name it; empty: the file's stem (mine for data/mine.jsonl.gz), or the Hub
    # dataset's name (gsm8k for openai/gsm8k)
    name: str = ""
    path: str = "${asset:datasets/addition.jsonl}"  # a file, or a Hub dataset id: org/name[@revision]
    limit: Optional[int] = None  # keep only the first N samples
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    kind: str = "generate"  # generate (the model writes an answer), multiple_choice (log-likelihood), perplexity
    split: Optional[str] = None  # Hub datasets and JSON files of splits: which split; null: the only one
    subset: Optional[str] = None  # Hub datasets: the configuration (e.g. main for gsm8k)
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)
    target_delimiter: str = " "  # multiple choice: between the context and each choice
    # image and audio parts are read from the dataset's folder, or from these folders
    media_dirs: List[str] = field(default_factory=list)
    max_media_mb: float = 20.0  # the largest image or audio part read (MB, each)

    def __post_init__(self) -> None:
        _check(bool(self.path.strip()), "dataset.path", self.path,
               "a .jsonl, .json, .csv or .parquet file, or a Hub dataset id")
        if not self.name.strip() and "${" not in self.path:  # not the schema's own default, ${asset:...} unresolved
            self.name = dataset_stem(self.path)
        _check(self.limit is None or self.limit >= 1, "dataset.limit", self.limit, "null or an integer >= 1")
        _check_choice("dataset.kind", self.kind, DATASET_KINDS)
        _check(self.max_media_mb > 0, "dataset.max_media_mb", self.max_media_mb, "a number of megabytes > 0")


def dataset_stem(path: str) -> str:
    """A dataset's name from where it is: `data/mine.jsonl.gz` -> mine, `openai/gsm8k@main` -> gsm8k."""
    name = Path(path.strip().rstrip("/").split("@")[0]).name
    while Path(name).suffix.lower() in _DATA_SUFFIXES:
        name = Path(name).stem
    return name or path.strip()


_DATA_SUFFIXES = (".gz", ".bz2", ".xz", ".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")


@dataclass
class TrackingConfig:
    """Where runs are recorded in MLflow."""

    enabled: bool = True  # false (tracking=none): only the local run folder
    uri: str = "sqlite:///runs/mlflow.db"  # relative sqlite paths are taken from the launch folder
    experiment: str = "pipeline"
    traces: bool = True  # one MLflow trace per answer (tool steps as child spans), logged after execute
    # answers traced at most: a sample chosen by sample id, the same answers in every run over the dataset (logging a
    # trace cost 4-9 ms on SQLite: 100,000 of them took longer than the run); null: every answer
    trace_sample: Optional[int] = 1000
    required: bool = True  # false: an unreachable store does not stop the run; upload later with python -m pipeline.sync
    timeout_s: float = 10.0  # seconds to wait for a tracking server before calling it unreachable

    def __post_init__(self) -> None:
        _check(self.timeout_s > 0, "tracking.timeout_s", self.timeout_s, "a number of seconds > 0")
        _check(self.trace_sample is None or self.trace_sample >= 1, "tracking.trace_sample", self.trace_sample,
               "null (every answer) or an integer >= 1")
        _check(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")
        _check("://" in self.uri or self.uri.startswith(("sqlite:", "databricks")), "tracking.uri",
               self.uri, "a tracking URI such as sqlite:///runs/mlflow.db or http://host:5000")


@dataclass
class ExecuteConfig:
    """How the execute stage meets a sample it cannot complete."""

    fail_fast: bool = False  # false: record the problem (status error) and go on; true: stop the run at the first


@dataclass
class CacheConfig:
    """The response cache (pipeline.backends.cache): completions kept by everything that decides them, shared by
    runs, sweeps, parallel jobs and judges. Off unless enabled; see docs/cache.md."""

    enabled: bool = False  # true: a request answered before (same model, prompt, settings, seed) is read, not generated
    dir: Optional[str] = None  # null: $PIPELINE_CACHE_DIR/responses, else ~/.cache/pipeline/responses
    size_limit: str = "4GiB"  # the oldest entries are evicted past this size

    def __post_init__(self) -> None:
        _check(parse_bytes(self.size_limit) is not None, "cache.size_limit", self.size_limit,
               "a size such as 512MiB, 4GiB or 10GB")
        _check(self.dir is None or bool(self.dir.strip()), "cache.dir", self.dir, "null or a folder")


@dataclass
class PipelineConfig:
    """Which stages run."""

    until: str = "summarize"  # stop after this stage: resolve, plan, load, execute, score, summarize
    from_transcript: Optional[str] = None  # a run folder: its answers scored again in a new run (no model runs)
    objective: str = "accuracy"  # the summary metric a sweep job returns (what an Optuna search optimises)

    def __post_init__(self) -> None:
        from pipeline.core.objective import is_objective, objective_names

        _check_choice("pipeline.until", self.until, STAGES)
        _check(self.from_transcript is None or bool(self.from_transcript.strip()), "pipeline.from_transcript",
               self.from_transcript, "null or a run folder")
        _check(self.from_transcript is None or self.until in ("score", "summarize"), "pipeline.until", self.until,
               "score or summarize with pipeline.from_transcript (it starts at the score stage)")
        _check(is_objective(self.objective), "pipeline.objective", self.objective,
               "a numeric summary field (" + ", ".join(objective_names()) + ") or pass_at_<k>")


@dataclass
class Config:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    execute: ExecuteConfig = field(default_factory=ExecuteConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    # a plain map in the schema (each kind has its own keys); a BackendConfig once built
    backend: Dict[str, Any] = field(default_factory=lambda: {"name": "transformers"})
    cache: CacheConfig = field(default_factory=CacheConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    resume: Optional[str] = None  # a run folder to continue (python -m pipeline resume=<folder> or resume=last)

    def __post_init__(self) -> None:
        self.backend = BackendConfig.from_dict(self.backend)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        backend, self.backend = self.backend, {}  # type: ignore[assignment]
        try:
            data = asdict(self)
        finally:
            self.backend = backend
        data["backend"] = backend.to_dict()
        return data

    def config_hash(self) -> str:
        """A digest of every setting that can change what the model writes."""
        relevant = {k: v for k, v in self.to_dict().items() if k in ("runtime", "generation", "session", "dataset")}
        relevant["dataset"].pop("scorer")  # scoring reads what the model wrote; it changes none of it
        canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _shown(value: Any) -> str:
    """A value as it is typed on the command line: null, true, auto."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


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
    missing = _missing_keys(plain)  # merged onto the schema, ??? would silently keep the default
    if missing:
        raise ConfigError(missing[0], "???", f"a value: set {missing[0]}=...")
    config = OmegaConf.to_object(OmegaConf.merge(_schema(), plain))
    assert isinstance(config, Config)
    return config


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    """The schema as a DictConfig, built once: building it took half of each job's config check.
    OmegaConf.merge copies its first argument, so merging onto it leaves it as it is."""
    return OmegaConf.structured(Config)


def _missing_keys(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is the missing marker ???, in order (a plain walk: OmegaConf's own
    missing_keys builds a DictConfig of the whole tree first)."""
    found = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        name = f"{prefix}[{key}]" if isinstance(data, list) else f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, (dict, list)):
            found += _missing_keys(value, name)
        elif value == "???":
            found.append(name)
    return found


def parse_bytes(text: Any) -> Optional[int]:
    """'6GiB' -> 6442450944, '512MB' -> 512000000, 1024 -> 1024; None when it is not a size."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text if text > 0 else None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in SIZE_UNITS:
        return None
    size = int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])
    return size if size > 0 else None


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


def expected_value(key: str, value: Any = None) -> Optional[str]:
    """What the setting `key` (a dotted name such as generation.stop or session.tools[0]) takes, in
    words, from the schema's type annotations: "a number", "null or a string", "a list of strings,
    e.g. generation.stop='[END]'". None when the schema does not know the key or takes anything.

    Used to say what a wrong value should have been when OmegaConf refuses it in its own terms
    ("str is not a ListConfig"); `value` (the refused one) shapes the example."""
    annotation = _annotation_of(key)
    return None if annotation is None else _describe_type(annotation, key, value)


def _annotation_of(key: str) -> Any:
    current: Any = Config
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", key):
        current = _unwrap_optional(current)
        origin, arguments = typing.get_origin(current), typing.get_args(current)
        if is_dataclass(current) and not part.startswith("["):
            hints = typing.get_type_hints(current)
            if part not in hints:
                return None
            current = hints[part]
        elif origin in (list, List) and part.startswith("[") and arguments:
            current = arguments[0]
        elif origin in (dict, Dict) and not part.startswith("[") and len(arguments) == 2:
            current = arguments[1]
        else:
            return None
    return current


def _unwrap_optional(annotation: Any) -> Any:
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(arguments) == 1:
        return arguments[0]
    return annotation


def _describe_type(annotation: Any, key: str, value: Any) -> Optional[str]:
    inner = _unwrap_optional(annotation)
    if inner is not annotation:
        described = _describe_type(inner, key, value)
        return None if described is None else f"null or {described}"
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        if isinstance(value, (list, dict)):  # Hydra read brackets or braces the user meant as text
            return f"a string (quote text that holds brackets, braces or commas: '{key}=\"...\"')"
        return "a string"
    if origin in (list, List):
        item = arguments[0] if arguments else Any
        example = value if isinstance(value, str) and value else "a, b"
        if item is str:
            return f"a list of strings, e.g. {key}='[{example}]'"
        return f"a list, e.g. {key}='[...]'"
    if origin in (dict, Dict):
        return f"a mapping of names to values, e.g. {key}='{{name: value}}', or one entry: +{key}.name=value"
    if is_dataclass(annotation):
        fields = list(typing.get_type_hints(annotation))
        return f"a group of settings ({', '.join(fields)}), each set on its own, as in {key}.{fields[0]}=..."
    return None
