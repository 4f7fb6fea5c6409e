"""The runner: calls the five stages in order, times each, and keeps the run folder and MLflow in step.

resolve -> plan -> load -> execute -> summarize, stopping after `pipeline.until`. The run folder
gets config.json, plan.json, transcript.jsonl, summary.json and status.json as each becomes
known. The MLflow run is opened once the plan holds (a mistake found while planning leaves no
run in MLflow), and is ended FINISHED, FAILED or KILLED to match status.json.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from pipeline.config import Config
from pipeline.console import ProgressSink
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.peak_memory import peak_memory, reset_peak_memory
from pipeline.records import RuntimePlan, Summary
from pipeline.redact import redact
from pipeline.reuse import LOAD_FILE, acquire
from pipeline.stages.execute import execute
from pipeline.stages.plan import plan_from_config
from pipeline.stages.resolve import resolve
from pipeline.stages.summarize import summarize
from pipeline.tracking import Tracker, config_params, run_tags
from pipeline.transcript import TRANSCRIPT_NAME, TranscriptWriter, read_transcript

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RunResult:
    run_dir: Path
    plan: Optional[RuntimePlan] = None
    summary: Optional[Summary] = None
    tracker: Optional[Tracker] = None


def run(config: Config, run_dir: Path, parent_run_id: Optional[str] = None,
        overrides: tuple[str, ...] = (), run_name: Optional[str] = None) -> RunResult:
    """Run the pipeline into `run_dir`. Raises UserError for mistakes, anything else for failures.

    `run_name` names the MLflow run (default: the run folder's name)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", redact(config.to_dict()))
    set_status(run_dir, "running")
    seconds: dict[str, float] = {}
    result = RunResult(run_dir)
    tracker = Tracker(config.tracking)

    def timed(stage: str, function: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        value = function(*args)
        seconds[stage] = time.perf_counter() - started
        tracker.log_metrics({f"stage/{stage}/seconds": seconds[stage]})
        log.info("%s: %.2f s", stage, seconds[stage])
        return value

    until = config.pipeline.until
    try:
        resolved = timed("resolve", resolve, config.runtime)
        if until == "resolve":
            print(json.dumps(asdict(resolved), indent=2))
            set_status(run_dir, "success")
            return result
        result.plan, samples, template = timed("plan", plan_from_config, config, resolved, overrides)
        write_json(run_dir / "plan.json", result.plan.to_dict())
        if until == "plan":
            print(json.dumps(result.plan.to_dict(), indent=2))
            set_status(run_dir, "success")
            return result

        tracker.start(run_name=run_name or run_dir.name, parent_run_id=parent_run_id, tags=run_tags(config, run_dir, {
            "weights_digest": resolved.weights_digest, "device": result.plan.device, "model.kind": resolved.kind,
            "model.path": resolved.path, "model.commit": resolved.commit or "", "overrides": " ".join(overrides)}))
        result.tracker = tracker
        tracker.log_params(config_params(config, result.plan))
        tracker.log_dataset(config.dataset, len(samples))
        tracker.log_metrics({f"stage/{s}/seconds": v for s, v in seconds.items()})

        reset_peak_memory(result.plan.device)
        runtime, loaded = timed("load", acquire, result.plan, template, config.runtime.trust_remote_code, run_dir,
                                config.runtime.reuse)
        write_json(run_dir / LOAD_FILE, loaded.to_dict())
        tracker.set_tags({"load.reused": str(loaded.reused).lower(), "load.reused_from": loaded.reused_from or ""})
        if until != "load":
            progress = ProgressSink(len(samples) * config.generation.num_samples, sys.stderr)
            with TranscriptWriter(run_dir / TRANSCRIPT_NAME) as writer:
                try:
                    timed("execute", execute, runtime, samples, config, writer, config.config_hash(), progress)
                finally:
                    progress.close()
        if until == "summarize":
            records = read_transcript(run_dir / TRANSCRIPT_NAME)
            result.summary = timed("summarize", summarize, records, seconds, config.dataset.scorer.label,
                                   peak_memory(result.plan.device))
            result.summary.stage_seconds = dict(seconds)  # now including summarize itself
            write_json(run_dir / "summary.json", result.summary.to_dict())
            tracker.log_metrics(result.summary.metrics())
    except KeyboardInterrupt:
        close_run(run_dir, tracker, "interrupted", "KILLED", "interrupted by the user")
        raise
    except UserError as error:
        close_run(run_dir, tracker, "failed", "FAILED", str(error))
        raise
    except Exception as error:
        close_run(run_dir, tracker, "failed", "FAILED", f"{type(error).__name__}: {error}")
        raise
    close_run(run_dir, tracker, "success", "FINISHED", "")
    return result


def close_run(run_dir: Path, tracker: Tracker, state: str, mlflow_status: str, reason: str) -> None:
    shutil.rmtree(run_dir / "offload", ignore_errors=True)  # disk-offloaded weights: a copy, not a result
    set_status(run_dir, state, reason)
    if tracker.run_id:
        try:
            tracker.log_traces(run_dir / TRANSCRIPT_NAME)  # after execute, whatever its outcome: it pays nothing
            tracker.log_artifacts(run_dir)
        finally:
            tracker.finish(mlflow_status)


def set_status(run_dir: Path, state: str, reason: str = "") -> None:
    write_json(run_dir / "status.json", {"state": state, "reason": reason, "time": time.time()})
