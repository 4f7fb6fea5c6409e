"""MLflow: one run per pipeline run, parent runs for sweeps, params, metrics, tags, artifacts.

The tracker talks to MLflow through `MlflowClient` only (no global active run), so several runs
can be open in one process and a job can attach itself to a sweep's parent by id. With tracking
disabled every method is a no-op and the run folder is the only record.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.backends import registry
from pipeline.core.config import Config, DatasetConfig, TrackingConfig, flatten
from pipeline.core.errors import first_line
from pipeline.core.records import RuntimePlan
from pipeline.core.redact import MASK, hide_credentials, is_secret_key, redact_overrides, redacted_text
from pipeline.core.transcript import read_transcript

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_TYPE, EVALUATION_RUN = "mlflow.runType", "genai_evaluate"  # as mlflow.genai.evaluate tags its runs
MAX_PARAM_LENGTH = 6000  # MLflow 3's limits: a param value, a tag value, a param/tag/metric name
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
BATCH_SIZE = 100  # params or tags per log_batch request (metrics may be 1000)
_KEY_CHARACTERS = re.compile(r"[^/\w.\- :]")  # what MLflow allows in a name; anything else becomes _
REDACTED_SUFFIXES = (".yaml", ".yml", ".json", ".log")  # where config values and errors can show up
PACKAGES = ("llm-pipeline", "torch", "transformers", "accelerate", "tokenizers", "mlflow", "hydra-core", "omegaconf",
            "jsonlines")


def tracking_uri(config: TrackingConfig) -> str:
    """The URI to use; a relative SQLite path is taken relative to the launch folder. Creates nothing:
    the store's folder is made when the store is (pipeline.tracking.guard), where a failure is told."""
    prefix = "sqlite:///"
    if config.uri.startswith(prefix) and not config.uri.startswith(prefix + "/"):
        database = Path(config.uri[len(prefix):]).resolve()
        return prefix + str(database)
    return config.uri


def artifact_root(uri: str) -> Optional[str]:
    """Artifacts of a SQLite store live beside the database (runs/mlartifacts); servers pick their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


# The loggers MLflow gives its own terminal handler on import; the SQL store logs a failed query with
# its whole traceback there (ninety lines for a read-only file), before our one-line message.
MLFLOW_LOGGERS = ("mlflow", "sqlalchemy", "sqlalchemy.engine", "alembic", "huey")


def quiet_mlflow_logs() -> None:
    """MLflow's and SQLAlchemy's log records go to the run's log file only, never to the terminal.

    A store failure is told to the user once, in our words (pipeline.tracking.guard); what MLflow
    logged about it stays in run.log for whoever needs the detail. Called after MLflow is imported
    (its import sets its handlers) and again for each run (Hydra resets the loggers per job)."""
    import mlflow  # noqa: F401 - its first import sets its own handlers: set ours after it

    files = [handler for handler in logging.getLogger().handlers if isinstance(handler, logging.FileHandler)]
    for name in MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = files or [logging.NullHandler()]  # no handler at all would fall back to stderr
        logger.propagate = False
        logger.setLevel(logging.WARNING)  # MLflow sets INFO on import


@dataclass(frozen=True)
class Evaluation:
    """What a run's answers are assessed with and against: the scorer's label and the dataset's name."""

    scorer: str
    dataset: str


class Tracker:
    """One MLflow run (or nothing, when tracking is disabled)."""

    def __init__(self, config: TrackingConfig, experiment_id: Optional[str] = None) -> None:
        self.enabled = config.enabled
        self.traces = config.traces
        self.trace_sample = config.trace_sample
        self.uri = tracking_uri(config) if config.enabled else ""
        self.experiment_name = config.experiment
        self.client: Any = None
        # given: the experiment a sweep created for its jobs (looking it up by name from many jobs at once
        # gains nothing and has raced); else found, or created, by name on connect
        self.experiment_id: Optional[str] = experiment_id
        self.run_id: Optional[str] = None
        self.evaluation: Optional[Evaluation] = None  # what the traces are assessed against (evaluate_with)

    def connect(self) -> None:
        """Open the store and the experiment, creating both if needed (safe against a parallel creator)."""
        if not self.enabled or self.client is not None:
            return
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        quiet_mlflow_logs()
        # MLflow prints a server run's address to stdout as it ends, `user:password@` and all; the
        # summary names the run (masked), and stdout carries only results
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        if self.experiment_id is not None:
            return
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    self.experiment_name, artifact_location=artifact_root(self.uri))
            except MlflowException:  # another process created it first
                self.experiment_id = self.client.get_experiment_by_name(self.experiment_name).experiment_id
        else:
            self.experiment_id = experiment.experiment_id

    def start(self, run_name: str, tags: dict[str, str], parent_run_id: Optional[str] = None) -> None:
        if not self.enabled:
            return
        self.connect()
        tags = tags_for_mlflow(tags)
        if parent_run_id:
            tags[PARENT_RUN_TAG] = parent_run_id
        run_name = redact_overrides(run_name)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.run_id:  # not started (tracking off, or before the plan holds): nothing to import
            return
        from mlflow.entities import Param

        params = params_for_mlflow(params)
        logged = self.client.get_run(self.run_id).data.params  # a resumed run has them already
        changed = sorted(key for key, value in params.items() if logged.get(key, value) != value)
        if changed:  # MLflow refuses to change a param; the new values are in config.json
            log.warning("MLflow keeps the first value of params %s for run %s", ", ".join(changed), self.run_id)
        self._batch(params=[Param(k, v) for k, v in params.items() if k not in logged])

    def log_dataset(self, config: DatasetConfig, samples: int) -> None:
        """The dataset as an MLflow dataset input: runs over the same file content share one dataset."""
        if not self.run_id:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from pipeline.data.sources import source_kind

        self.evaluate_with(config.scorer.label, config.name)
        profile = json.dumps({"samples": samples, "limit": config.limit, "split": config.split,
                              "subset": config.subset})
        if source_kind(config.path) == "hub":  # named by its cached snapshot's commit (pipeline.data.hub)
            from pipeline.core.hub_cache import parse_repo_reference
            from pipeline.data.hub import find_dataset

            repo_id, revision = parse_repo_reference(config.path.strip()) or (config.path, None)
            folder = find_dataset(repo_id, revision)
            dataset = Dataset(name=config.name, digest=(folder.name if folder else "unknown")[:32],
                              source_type="hugging_face", source=json.dumps({"path": repo_id, "revision": revision}),
                              profile=profile)
        else:
            path = Path(config.path).expanduser().resolve()
            dataset = Dataset(name=config.name, digest=file_digest(path), source_type="local",
                              source=json.dumps({"uri": str(path)}), profile=profile)
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags=[
            InputTag("mlflow.data.context", "eval"), InputTag("samples", str(samples))])])

    def evaluate_with(self, scorer: str, dataset: str) -> None:
        """What the traces are assessed with and against (log_assessments): set by log_dataset, and by a run
        that starts at the score stage (a re-score, a resumed run whose answers were all there)."""
        self.evaluation = Evaluation(scorer, dataset)

    def log_traces(self, transcript: Path) -> None:
        """One MLflow trace per answer in the transcript, linked to this run (see pipeline.tracking.traces).

        Never fails the run: the transcript, uploaded with the artifacts, holds the same records."""
        if not (self.run_id and self.traces and transcript.is_file()):
            return
        from pipeline.tracking.traces import log_traces, traced

        started = time.perf_counter()
        try:
            count = log_traces(self.uri, self.experiment_id, self.run_id,
                               traced(read_transcript(transcript), self.trace_sample))
        except Exception as error:  # noqa: BLE001 - a trace store problem is reported, not fatal
            log.warning("traces not logged to MLflow: %s: %s", type(error).__name__, first_line(error))
            return
        self.log_metrics({"traces": count, "traces/seconds": time.perf_counter() - started})
        self.log_assessments(transcript)

    def log_assessments(self, transcript: Path) -> None:
        """Each trace's Feedback and Expectation (see pipeline.tracking.assessments), after its traces;
        the score's mean as MLflow's evaluation runs name it (`<scorer>/mean`).

        Never fails the run: the transcript, uploaded with the artifacts, holds the same scores."""
        if not (self.run_id and self.evaluation):
            return
        from pipeline.tracking.assessments import log_assessments
        from pipeline.tracking.traces import traced

        evaluation, started = self.evaluation, time.perf_counter()
        records = read_transcript(transcript)
        try:  # on the traced answers; the mean below is over all of them
            written = log_assessments(self.uri, self.experiment_id, self.run_id, traced(records, self.trace_sample),
                                      evaluation.scorer, evaluation.dataset)
        except Exception as error:  # noqa: BLE001 - an assessment store problem is reported, not fatal
            log.warning("assessments not logged to MLflow: %s: %s", type(error).__name__, first_line(error))
            return
        self.log_metrics({"assessments": written.written + written.kept,
                          "assessments/seconds": time.perf_counter() - started})
        scores = [r["score"] for r in records if r.get("kind", "answer") == "answer" and r.get("score") is not None]
        if scores:  # the same number as accuracy, under the name MLflow's own evaluations give it
            self.log_metrics({f"{mlflow_key(evaluation.scorer)}/mean": sum(scores) / len(scores)})

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._batch(metrics=[Metric(k, shown(k, float(v)), now, 0) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifacts(self, folder: Path, under: Optional[str] = None) -> None:
        """Upload the folder's files, keeping its layout (below `under` in the run's artifacts)."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            subfolder = Path(under or "", path.parent.relative_to(folder)).as_posix()
            self.log_artifact(path, None if subfolder == "." else subfolder)

    def log_artifact(self, path: Path, subfolder: Optional[str] = None) -> None:
        """Upload one file; config, log and JSON files go up with their secrets masked."""
        if not self.run_id:
            return
        if path.suffix not in REDACTED_SUFFIXES:
            self.client.log_artifact(self.run_id, str(path), subfolder)
            return
        with tempfile.TemporaryDirectory() as staging:
            copy = Path(staging) / path.name
            copy.write_text(redacted_text(path), encoding="utf-8")
            self.client.log_artifact(self.run_id, str(copy), subfolder)

    def finish(self, status: str) -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    @property
    def display_uri(self) -> str:
        """The store's URI as it may be printed: without credentials."""
        return hide_credentials(self.uri)

    def run_url(self) -> str:
        """The run's page in the MLflow UI, relative to the UI's address."""
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}" if self.run_id else ""

    def runs_table_url(self) -> str:
        """The experiment's run table, where a sweep's parent unfolds into its jobs."""
        return f"#/experiments/{self.experiment_id}/runs"

    def _batch(self, params: list = (), metrics: list = ()) -> None:
        params, metrics = list(params), list(metrics)
        for start in range(0, max(len(params), len(metrics)), BATCH_SIZE):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH_SIZE],
                                  metrics=metrics[start:start + BATCH_SIZE])


TIMED = ("seconds", "_s", "per_second")  # how the names of timings and speeds end
ESTIMATED = ("_ci_low", "_ci_high", "_mean", "_share")  # interval bounds and averages


def shown(key: str, value: float) -> float:
    """A timing or a speed to the millisecond (or the thousandth), an interval bound or an average to four
    decimals: more digits are noise, and MLflow's tables show every digit logged. Scores, counts and the
    rest are logged as they are (summary.json keeps every figure whole)."""
    if key.endswith(TIMED):
        return round(value, 3)
    return round(value, 4) if key.endswith(ESTIMATED) else value


def params_for_mlflow(params: dict[str, Any]) -> dict[str, str]:
    """Stringify, hide secrets, and keep every name and value within MLflow's rules and limits."""
    result = {}
    for key, value in params.items():
        text = "null" if value is None else redact_overrides(str(value))
        if is_secret_key(key) and value not in (None, {}):  # an empty headers map hides nothing
            text = MASK
        result[_unique(mlflow_key(key), key, result)] = _cut(text, MAX_PARAM_LENGTH)
    return result


def tags_for_mlflow(tags: dict[str, str]) -> dict[str, str]:
    """Tags with secrets masked, names MLflow accepts, values within its limit."""
    result: dict[str, str] = {}
    for key, value in tags.items():
        result[_unique(mlflow_key(key), key, result)] = _cut(redact_overrides(str(value)), MAX_TAG_LENGTH)
    return result


def mlflow_key(key: str) -> str:
    """A name MLflow accepts for a param or tag: its characters only, no path tricks, at most 250 characters."""
    name = _KEY_CHARACTERS.sub("_", key).strip("/")
    name = re.sub(r"/{2,}", "/", name)
    name = "/".join("_" if part in (".", "..") else part for part in name.split("/")) or "_"
    if len(name) > MAX_KEY_LENGTH:  # keep the start readable and the whole key distinct
        name = name[:MAX_KEY_LENGTH - 9] + "-" + _short_hash(key)
    return name


def _unique(name: str, original: str, taken: dict[str, str]) -> str:
    """Two keys that become the same name (`a:b`, `a_b`) keep both values: the second gets a suffix."""
    if name not in taken:
        return name
    return name[:MAX_KEY_LENGTH - 9] + "-" + _short_hash(original)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def file_digest(path: Path) -> str:
    """The sha256 of a file's content, cut to 32 hex digits (MLflow keeps dataset digests to 36)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def config_params(config: Config, plan: Optional[RuntimePlan] = None) -> dict[str, Any]:
    """The composed config, plus what the plan decided (plan.*) and the effective generation settings.

    Of `backend`, its name and the chosen backend's own settings as it uses them (defaults filled in;
    none of the other backend's unset ones); header values and URL credentials are masked on the way
    to MLflow (params_for_mlflow)."""
    params = {key: value for key, value in flatten(config.to_dict()).items() if not key.startswith("backend.")}
    params.update(flatten(registry.effective_settings(config.backend), "backend."))
    if plan is not None:
        params.update(plan_params(vars(plan)))  # its fields as they are: no copy of the whole plan
        params.update(judge_params(plan.judge))
    return params


def judge_params(judge: dict[str, Any]) -> dict[str, Any]:
    """Who judged (scoring=judge; {} without a judge): the model as resolved, its weights digest or server,
    the prompt's digest and the effective generation settings, as judge.* params."""
    if not judge:
        return {}
    keys = ("model", "backend", "weights_digest", "endpoint", "prompt_digest", "fingerprint")
    params = {f"judge.{key}": judge.get(key) or "" for key in keys}
    params.update({f"judge.effective.generation.{k}": v for k, v in (judge.get("generation") or {}).items()})
    return params


PLAN_PARAMS = ("backend", "device", "dtype", "batch_size")


def plan_params(plan: dict[str, Any]) -> dict[str, Any]:
    """What the plan decided, as params (from a RuntimePlan's fields, or a run folder's plan.json): where the model
    runs and the batch as plan.*, the kind's own options as plan.option.* (transformers' attention and offload,
    vLLM's max_model_len, ...; one left unset, null, is not a param), the effective generation settings as
    effective.generation.*."""
    params = {f"plan.{key}": plan[key] for key in PLAN_PARAMS if key in plan}
    params.update({f"plan.option.{key}": value for key, value in (plan.get("backend_options") or {}).items()
                   if value is not None})
    params.update({f"effective.generation.{key}": value for key, value in (plan.get("generation") or {}).items()})
    return params


def run_name(what: str, overrides: Sequence[str], job: Optional[int] = None) -> str:
    """What the run table shows for a run: what ran and what its command line set, not when it started.

    `demo on addition · generation.temperature=0.7`; a sweep's job starts with its number (its folder's
    name): `2 · demo on addition · generation.temperature=1.5 generation.seed=1`. Hydra's own settings
    (the run folder) and the source of a re-scoring (in `what`) are left out."""
    shown = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "resume=",
                                                                     "pipeline.from_transcript="))]
    parts = ([str(job)] if job is not None else []) + [what] + ([" ".join(shown)] if shown else [])
    return _cut(" · ".join(parts), MAX_KEY_LENGTH)


def model_label(model: dict[str, Any]) -> str:
    """A model as a run's name shows it: its alias, repo id or folder name (from a ResolvedModel's fields)."""
    return (model.get("alias") or model.get("repo_id") or (Path(model["path"]).name if model.get("path") else "")
            or model.get("reference") or "a model")


def run_tags(config: Config, run_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    return {"config_hash": config.config_hash(), "run_dir": str(run_dir), **_software_tags(),
            RUN_TYPE: EVALUATION_RUN, **extra}


@functools.lru_cache(maxsize=1)
def _software_tags() -> dict[str, str]:
    """What ran: Python, package versions, the source and its commit. The same for every job of a
    process, so read once (the package metadata took 15 ms a job)."""
    tags = {
        "python": platform.python_version(),
        **{f"version.{name}": _version(name) for name in PACKAGES},
        "mlflow.source.type": "LOCAL",  # the UI's Source column: the command, and the commit below
        "mlflow.source.name": "python -m pipeline",
    }
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
