"""MLflow: one run per pipeline run, parent runs for sweeps, params, metrics, tags, artifacts.

The tracker talks to MLflow through `MlflowClient` only (no global active run), so several runs
can be open in one process and a job can attach itself to a sweep's parent by id. With tracking
disabled every method is a no-op and the run folder is the only record.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from pipeline.config import Config, TrackingConfig, flatten
from pipeline.records import RuntimePlan
from pipeline.redact import MASK, hide_credentials, is_secret_key, redact_overrides, redacted_text

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"
MAX_PARAM_LENGTH = 6000  # MLflow 3's limit on a param value
REDACTED_SUFFIXES = (".yaml", ".yml", ".json", ".log")  # where config values and errors can show up
PACKAGES = ("torch", "transformers", "mlflow", "hydra-core", "omegaconf", "jsonlines")


def tracking_uri(config: TrackingConfig) -> str:
    """The URI to use; a relative SQLite path is taken relative to the launch folder."""
    prefix = "sqlite:///"
    if config.uri.startswith(prefix) and not config.uri.startswith(prefix + "/"):
        database = Path(config.uri[len(prefix):]).resolve()
        database.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(database)
    return config.uri


def artifact_root(uri: str) -> Optional[str]:
    """Artifacts of a SQLite store live beside the database (runs/mlartifacts); servers pick their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


class Tracker:
    """One MLflow run (or nothing, when tracking is disabled)."""

    def __init__(self, config: TrackingConfig) -> None:
        self.enabled = config.enabled
        self.uri = tracking_uri(config) if config.enabled else ""
        self.experiment_name = config.experiment
        self.client: Any = None
        self.experiment_id: Optional[str] = None
        self.run_id: Optional[str] = None

    def connect(self) -> None:
        """Open the store and the experiment, creating both if needed (safe against a parallel creator)."""
        if not self.enabled or self.client is not None:
            return
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # MLflow sets INFO on import; keep its chatter out
        self.client = MlflowClient(tracking_uri=self.uri)
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
        tags = {key: redact_overrides(value) for key, value in tags.items()}
        if parent_run_id:
            tags[PARENT_RUN_TAG] = parent_run_id
        run_name = redact_overrides(run_name)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.run_id:  # not started (tracking off, or before the plan holds): nothing to import
            return
        from mlflow.entities import Param

        self._batch(params=[Param(k, v) for k, v in params_for_mlflow(params).items()])

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._batch(metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def log_artifacts(self, folder: Path) -> None:
        """Upload the folder's files, keeping its layout."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            subfolder = path.parent.relative_to(folder).as_posix()
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
        for start in range(0, max(len(params), len(metrics)), 100):  # MLflow's per-request limits
            self.client.log_batch(self.run_id, params=params[start:start + 100], metrics=metrics[start:start + 100])


def params_for_mlflow(params: dict[str, Any]) -> dict[str, str]:
    """Stringify, hide secrets and keep every value within MLflow's length limit."""
    result = {}
    for key, value in params.items():
        text = "null" if value is None else redact_overrides(str(value))
        if is_secret_key(key):
            text = MASK
        if len(text) > MAX_PARAM_LENGTH:
            text = text[:MAX_PARAM_LENGTH - 1] + "…"
        result[key] = text
    return result


def config_params(config: Config, plan: Optional[RuntimePlan] = None) -> dict[str, Any]:
    """The composed config, plus what the plan decided (plan.*) and the effective generation settings."""
    params = flatten(config.to_dict())
    if plan is not None:
        params.update({f"plan.{key}": getattr(plan, key) for key in PLAN_PARAMS})
        params.update({f"effective.generation.{key}": value for key, value in plan.generation.items()})
    return params


PLAN_PARAMS = ("backend", "device", "dtype", "attn_implementation", "batch_size", "offload")


def run_tags(config: Config, run_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    tags = {
        "config_hash": config.config_hash(),
        "run_dir": str(run_dir),
        "python": platform.python_version(),
        **{f"version.{name}": _version(name) for name in PACKAGES},
        **extra,
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
