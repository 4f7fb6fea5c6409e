"""A sweep's points run by a cluster scheduler (SLURM through submitit), as the launching process sees them.

A point's run ends its own folder and MLflow run for whatever stops it in Python: an error, or
SIGTERM from `scancel` or at the time limit (the runner's interrupt path). What Python never sees
is settled here, once the scheduler says the job ended: a node that died, SIGKILL after the grace
time, a job cancelled before it started, setup lines that failed. Each point of such a job whose
folder holds no final state gets one (`interrupted` when the job was stopped from outside,
`failed` otherwise) naming the scheduler's job and state, and its MLflow run, when it had one, ends
KILLED or FAILED; a point that ended its own run keeps its state, with the job's state added to its
reason. A resumed sweep submits only the points that are not `finished`.

Not for: submitting or waiting (hydra_plugins.pipeline_launcher.slurm), nor a point's run itself
(pipeline.run.runner).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.config import STAGES, TrackingConfig
from pipeline.core.files import read_json
from pipeline.core.folder_names import TRACKING_FILE
from pipeline.run.resume import ran_until
from pipeline.run.status import read_status, set_status
from pipeline.tracking.guard import GuardedTracker

log = logging.getLogger(__name__)
# scheduler states of a job stopped from outside (its runs end KILLED, resumable); any other is a failure
STOPPED_STATES = ("CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE")


def finished(job_dir: Path, until: str) -> bool:
    """Whether the point in `job_dir` ended with success, as far as `until` (pipeline.until) asks."""
    return read_status(job_dir).get("state") == "success" and STAGES.index(ran_until(job_dir)) >= STAGES.index(until)


def settle(job_dir: Path, job: str, scheduler_state: str, detail: str, tracking: TrackingConfig) -> str:
    """Give the point in `job_dir` a final state after its job ended without its result; that state.

    `job` is the scheduler's job id, `scheduler_state` its end (`CANCELLED by 0`), `detail` what the job's
    failure said and where its log is, `tracking` the store the point's MLflow run is in."""
    ended = f"SLURM job {job} ended {scheduler_state}"
    status = read_status(job_dir)
    state = status.get("state")
    if state == "success":
        return state
    if state in ("failed", "interrupted"):  # the run ended itself, and said why; add what became of its job
        if ended not in status.get("reason", ""):
            set_status(job_dir, state, f"{status.get('reason') or state}; {ended}")
        return state
    state = "interrupted" if stopped(scheduler_state) else "failed"
    failure = "" if stopped(scheduler_state) else f" ({detail})"
    set_status(job_dir, state, f"{ended} before this point {'ended' if status else 'started'}{failure}")
    _end_mlflow_run(job_dir, "KILLED" if stopped(scheduler_state) else "FAILED", tracking)
    return state


def stopped(scheduler_state: str) -> bool:
    """Whether the scheduler's state (`CANCELLED by 0`, `TIMEOUT`, `NODE_FAIL`, ...) is a job stopped from outside."""
    return scheduler_state.split()[0].upper().rstrip("+") in STOPPED_STATES if scheduler_state.strip() else False


def _end_mlflow_run(job_dir: Path, status: str, tracking: TrackingConfig) -> None:
    """End the point's MLflow run when it began one that nothing ended (tracking.json still `live`)."""
    path = job_dir / TRACKING_FILE
    record = read_json(path) if path.is_file() else {}
    if record.get("state") != "live" or not record.get("run_id"):
        return
    tracker = GuardedTracker(tracking, job_dir)
    tracker.required = False  # the store being down must not hide the other points' results
    tracker.connect()
    tracker.run_id = record["run_id"]
    tracker.finish(status)
    if tracker.offline_reason:
        log.warning("the MLflow run of %s could not be ended %s: %s", job_dir, status, tracker.offline_reason)
