"""`python -m pipeline.sync <run folder> [--uri URI]`: put a run that MLflow missed into MLflow.

A run made with `tracking.required=false` while the store was unreachable (or that lost it on the
way) has everything in its folder: config.json, plan.json, summary.json, status.json and the
transcript. This uploads them as the run would have: params, tags, metrics, the folder as
artifacts, and the end status (success -> FINISHED, failed -> FAILED, interrupted -> KILLED). The
MLflow run the run had begun, if the store holds it, is continued rather than duplicated;
`tracking.json` then records the run id. Exit codes: 0 done (or nothing to do), 1 the upload
failed, 2 not a run folder, or one still in use.

It does not change anything in the run folder except tracking.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.core.config import TrackingConfig, flatten
from pipeline.core.errors import EXIT_FAILURE, EXIT_USAGE, TrackingError, UserError
from pipeline.core.files import read_json
from pipeline.core.folder_names import CONFIG_FILE, PLAN_FILE, SUMMARY_FILE, TRACKING_FILE
from pipeline.core.records import Summary
from pipeline.run.files import run_files, run_folder_problem
from pipeline.run.status import in_use_message, is_locked, planned, read_status
from pipeline.tracking.guard import GuardedTracker
from pipeline.tracking.runs import model_label, plan_params, run_name

END_STATUS = {"success": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
log = logging.getLogger("pipeline.cli.sync")


def sync(run_dir: Path, uri: str | None = None) -> str:
    """Upload the run in `run_dir`; returns the MLflow run id. UserError when it is not a finished run folder."""
    problem = run_folder_problem(run_dir)
    if problem:
        raise UserError(problem)
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.json); give the `run dir` a run printed")
    if planned(run_dir):
        raise UserError(f"{run_dir} was only planned (pipeline.until=plan): nothing ran, so there is nothing to put "
                        "into MLflow")
    if is_locked(run_dir):
        raise UserError(in_use_message(run_dir))
    state = read_status(run_dir).get("state", "started")
    config = read_json(run_dir / CONFIG_FILE)
    tracking = dict(config.get("tracking") or {})
    recorded = _read(run_dir / TRACKING_FILE)
    if recorded.get("state") == "finished" and not uri:
        log.info("%s is already in MLflow: run %s (%s)", run_dir, recorded.get("run_id"), recorded.get("uri"))
        return recorded["run_id"]
    settings = TrackingConfig(enabled=True, uri=uri or tracking.get("uri") or TrackingConfig.uri,
                              experiment=tracking.get("experiment") or "pipeline", required=True,
                              timeout_s=float(tracking.get("timeout_s") or 10.0))
    tracker = GuardedTracker(settings, run_dir, resuming=True)
    plan = _read(run_dir / PLAN_FILE)
    what = f"{model_label(plan.get('model') or {'reference': config.get('runtime', {}).get('model')})} on " \
           f"{config.get('dataset', {}).get('name', 'a dataset')}"
    tracker.start(run_name=run_name(what, []), tags={
        "run_dir": str(run_dir), "config_hash": _config_hash(run_dir), "synced_from": str(run_dir)})
    tracker.log_params(run_params(config, plan))
    summary = _read(run_dir / SUMMARY_FILE)
    if summary:
        known = {key: value for key, value in summary.items() if key in Summary.__dataclass_fields__}
        tracker.log_metrics({**Summary(**known).metrics(),
                             **{f"stage/{stage}/seconds": s for stage, s in summary.get("stage_seconds", {}).items()}})
    for path, subfolder in run_files(run_dir):  # what the run wrote, as the live run uploads it
        tracker.log_artifact(path, subfolder)
    tracker.finish(END_STATUS.get(state, "FAILED"))
    return tracker.run_id or ""


def run_params(config: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The params a live run logs (pipeline.tracking.runs.config_params), rebuilt from config.json and plan.json."""
    params = flatten(config)
    if plan:
        params.update(plan_params(plan))
    return params


def _config_hash(run_dir: Path) -> str:
    """The hash the run's records carry (config.json is redacted, so it is read from the transcript)."""
    from pipeline.core.folder_names import TRANSCRIPT_FILE
    from pipeline.core.transcript import read_transcript

    records = read_transcript(run_dir / TRANSCRIPT_FILE)
    return records[0]["config_hash"] if records else ""


def _read(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run folder (the `run dir` a run printed)")
    parser.add_argument("--uri", help="the tracking URI to upload to (default: the run's tracking.uri)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        run_id = sync(args.run_dir.resolve(), args.uri)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except TrackingError as error:
        print(f"sync failed: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    print(f"synced    {args.run_dir} -> MLflow run {run_id}")


if __name__ == "__main__":
    main()
