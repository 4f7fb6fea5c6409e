"""Command-line entry: `python -m pipeline [overrides]`, or `-m` for a sweep.

compose -> validate -> run -> exit code. The command line is checked first (pipeline.cli.precheck),
so a config mistake prints one line and exits 2 before Hydra creates any folder. Then Hydra
composes the config and calls `hydra_main` once per job, which converts it to typed dataclasses
and hands it to the runner (pipeline.from_transcript too: a run that starts at the score stage). Exit codes:
0 success, 1 the run failed, 2 a mistake in the config or the inputs, 130 interrupted (Ctrl-C),
143 stopped by SIGTERM. `resume=<run folder>` or `resume=last` continues a run or a sweep
(pipeline.run.resume). What stops outside a job (Hydra's own errors: creating the run folder, its
launcher and sweeper; Ctrl-C or SIGTERM in a sweep) ends in pipeline.run.outside_jobs.
"""

from __future__ import annotations

import atexit
import errno
import logging
import math
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline.cli import early_signals
from pipeline.cli.precheck import check_jobs
from pipeline.core.config import CONF_DIR, register, to_config
from pipeline.core.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    BackendUnavailable,
    Interrupted,
    LoadError,
    RequestFailure,
    StorageError,
    ToolFailure,
    TrackingError,
    UserError,
    describe_config_exception,
    forget_signals,
    quiet_swallowed_signals,
    raise_if_signalled,
    reraise_interruption,
    signalled,
)
from pipeline.core.folder_names import HYDRA_FOLDER, MULTIRUN_FILE, STATUS_FILE, TRANSCRIPT_FILE
from pipeline.run.resume import check_output_folder, enter_launch_folder, expand_command_line, ran_until
from pipeline.tracking.guard import check_tracking_store

# Only what checks the command line is imported above: a mistake is refused before the runner, the
# stages and the sweep machinery are read (pipeline.run.runner and the rest are imported where used).

log = logging.getLogger("pipeline")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> Optional[float]:
    """One job: returns its `pipeline.objective` (what a Hydra sweeper optimises), or exits with its code."""
    if threading.current_thread() is not threading.main_thread():
        return _job(cfg)
    # In a joblib worker too, SIGTERM ends the job as in the launching process; an idle worker keeps its own
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _job(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _job(cfg: DictConfig) -> Optional[float]:
    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    from pipeline.core.console import run_summary
    from pipeline.core.redact import mask_secrets_in_files
    from pipeline.run.log_file import hold_run_log
    from pipeline.run.resume import write_record
    from pipeline.run.runner import run
    from pipeline.run.status import discard, planned
    from pipeline.core.objective import objective_value
    from pipeline.tracking.sweep import sweep_parent

    if cfg.get("resume") is not None:
        hold_run_log()  # a resume writes nothing into the run folder until it is accepted (pipeline.run.log_file)
        if in_sweep:
            write_record(run_dir, cfg)  # a job that never started before: its record, as the sweep would write it
    try:
        # Hydra has just copied the command line and config into the folder: no secret stays there
        mask_secrets_in_files([run_dir / HYDRA_FOLDER / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
                              + ([Path(hydra_config.sweep.dir) / MULTIRUN_FILE] if in_sweep else []))
        config = to_config(cfg)
        overrides = tuple(hydra_config.overrides.task)
        parent, experiment_id = (sweep_parent(Path(hydra_config.sweep.dir), config.tracking) if in_sweep
                                 else (None, None))
        # in a sweep, the MLflow run's name starts with the job's number, its folder's name
        result = run(config, run_dir, parent_run_id=parent, overrides=overrides,
                     job=hydra_config.job.num if in_sweep else None, experiment_id=experiment_id)
    except KeyboardInterrupt as interrupt:
        if in_sweep:  # the sweep stops here: the entry point ends its parent run and says how to resume it
            log.error("interrupted job %s; its folder keeps what was written: %s", hydra_config.job.num, run_dir)
            raise
        if cfg.get("resume") is None and not (run_dir / STATUS_FILE).exists():  # before the run began
            discard(run_dir)
            log.error("interrupted before the run started; nothing was kept")
        else:
            log.error("interrupted; the run folder keeps what was written: %s (continue with: python -m pipeline "
                      "resume=%s)", run_dir, run_dir)
        sys.exit(getattr(interrupt, "exit_code", EXIT_INTERRUPTED))
    except UserError as error:
        reraise_interruption(error)
        if not in_sweep and cfg.get("resume") is None and not (run_dir / TRANSCRIPT_FILE).exists():
            discard(run_dir)  # a mistake found before any record: leave nothing behind
            log.error("error: %s", error)
            sys.exit(EXIT_USAGE)
        if not in_sweep and cfg.get("resume") is not None:  # a refused resume leaves the run as it found it
            log.error("error: %s", error)
            sys.exit(EXIT_USAGE)
        return _fail(run_dir, f"error: {error}", EXIT_USAGE, in_sweep)
    except Exception as error:  # a config error raised while converting lands here too
        reraise_interruption(error)
        if isinstance(error, BackendUnavailable):  # nothing of ours broke: what is left waits for the backend
            return _fail(run_dir, f"run failed: {error}; the records written are kept: once it answers again, "
                                  f"continue with: python -m pipeline resume={run_dir}", EXIT_FAILURE, in_sweep)
        if _is_config_error(error):
            message = describe_config_exception(error)
        elif isinstance(error, OSError) and error.errno == errno.ENOSPC:  # a write other than the transcript's
            message = (f"the disk is full while writing {error.filename or run_dir}: what was written is kept; "
                       f"free some space, then continue with: python -m pipeline resume={run_dir}")
        else:
            failures = (LoadError, ToolFailure, RequestFailure, StorageError, TrackingError)
            message = str(error) if isinstance(error, failures) else f"{type(error).__name__}: {error}"
        try:
            with (run_dir / f"{hydra_config.job.name}.log").open("a", encoding="utf-8") as log_file:
                traceback.print_exc(file=log_file)
        except OSError:  # a full disk: the log misses the traceback, the one line below still says what happened
            pass
        return _fail(run_dir, f"run failed: {message} (traceback in {run_dir}/{hydra_config.job.name}.log)",
                     EXIT_FAILURE, in_sweep)
    if result.complete:
        stopped = ran_until(run_dir)
        later = "" if stopped == "summarize" else (f" (it stopped after {stopped}; go on with: python -m pipeline "
                                                   f"resume={run_dir} pipeline.until=summarize)")
        if planned(run_dir):
            later = (f" (pipeline.until={stopped}: nothing was run); run it with: python -m pipeline "
                     f"resume={run_dir} pipeline.until=summarize")
        print(f"nothing to resume: {run_dir} {'was only planned' if planned(run_dir) else 'has completed'}{later}",
              flush=True)
        return None if result.summary is None else objective_value(result.summary, config.pipeline.objective)
    if result.summary is not None:
        tracker = result.tracker
        mlflow = None if tracker is None or not tracker.run_id else {
            "run_id": tracker.run_id, "experiment": tracker.experiment_name, "uri": tracker.display_uri,
            "url": tracker.run_url()}
        text = run_summary(result.summary, run_dir, mlflow)
        if getattr(tracker, "offline_reason", None):  # in place of the summary's last (mlflow) line
            text = text.rsplit("\n", 1)[0] + (f"\nmlflow    not recorded ({tracker.offline_reason}); upload with: "
                                              f"python -m pipeline.sync {run_dir}")
        print(text, flush=True)
        return objective_value(result.summary, config.pipeline.objective)
    if config.pipeline.until in ("load", "execute", "score"):  # resolve and plan printed their JSON already
        then = (f"; score it later with: python -m pipeline resume={run_dir} pipeline.until=summarize"
                if config.pipeline.until == "execute" else "")
        print(f"stopped after {config.pipeline.until}; run dir {run_dir}{then}", flush=True)
    return None


def _fail(run_dir: Path, message: str, code: int, in_sweep: bool) -> float:
    """Report a failed job: one line; a single run exits, a sweep goes on to its next job (NaN: a failed trial)."""
    from pipeline.run.status import set_status

    if not (run_dir / STATUS_FILE).is_file():
        set_status(run_dir, "failed", message)
    log.error(message)
    if not in_sweep:
        sys.exit(code)
    return math.nan


def _is_config_error(error: Exception) -> bool:
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(error, OmegaConfBaseException)


def main() -> None:
    forget_signals()
    sys.unraisablehook = quiet_swallowed_signals  # a signal landing in a finalizer: raised later, not printed
    outside_jobs = sys.modules.get("pipeline.run.outside_jobs")  # imported by an earlier command in this process
    if outside_jobs is not None:
        outside_jobs.forget_run_folder()
    signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # not when started with Ctrl-C ignored
        signal.signal(signal.SIGINT, _interrupt)
    try:
        _main()
    except KeyboardInterrupt as interrupt:  # wherever it lands, before or after the jobs too: one line
        from pipeline.run import outside_jobs

        sys.exit(outside_jobs.interrupted(interrupt))


def _main() -> None:
    try:
        sys.argv[1:] = expand_command_line(sys.argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    enter_launch_folder(sys.argv[1:])  # a resume's relative paths mean what they meant when the run started
    checked = check_jobs(sys.argv[1:])
    problem = checked.problem or check_output_folder(sys.argv[1:], checked.first_job) \
        or check_tracking_store(checked.first_job)
    if problem:
        raise_if_signalled()  # a signal that landed in the check, which turns what it catches into a problem
        print(f"config error: {problem}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    register()
    # Hydra's own errors (creating the run folder, its launcher and sweeper) come here, not to its traceback
    os.environ["HYDRA_FULL_ERROR"] = "1"
    from pipeline.run import outside_jobs
    from pipeline.tracking.sweep import SweepCallbackError

    try:
        hydra_main()
    except SweepCallbackError as stop:
        sys.exit(outside_jobs.failed(stop.error))
    except Exception as error:  # noqa: BLE001 - raised outside the jobs (they handle their own)
        reraise_interruption(error)
        sys.exit(outside_jobs.failed(error))


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a run the way Ctrl-C does: records flushed, status interrupted, MLflow KILLED, exit 143."""
    _stop_workers(signum)
    raise signalled(Interrupted())


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C: as Python's own handler (KeyboardInterrupt), once a sweep's jobs in other processes ended."""
    _stop_workers(signum)
    raise signalled(KeyboardInterrupt())


def _stop_workers(signum: int) -> None:
    """A sweep's jobs in other processes end first; no sweep was launched while its module is not imported."""
    outside_jobs = sys.modules.get("pipeline.run.outside_jobs")
    if outside_jobs is not None:
        outside_jobs.stop_workers(signum)


def exit_without_teardown(code: object) -> None:
    """Exit once everything is written, skipping the interpreter's teardown.

    By now every file is closed and fsynced and the MLflow runs are ended. What is left is Python
    freeing every module and object, which with torch, transformers and matplotlib loaded took
    1.3 s of a 15 s sweep on a 2-core CPU. This does what the interpreter's exit does before that
    teardown, in its order: wait for the other threads and run threading's exit hooks (joblib's
    workers are shut down there), then the atexit handlers (logging's flush, MLflow's), then flush
    stdout and stderr. A message code (sys.exit("text")) is printed and exits 1.
    """
    early_signals.exit_at_once("interrupted while exiting; what the command printed above is what it did")
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def entry() -> None:
    """`python -m pipeline` and the `llm-pipeline` command (pyproject.toml's console script)."""
    try:
        main()
    except SystemExit as stop:
        exit_without_teardown(stop.code)
    except KeyboardInterrupt as interrupt:  # again, while the first was being handled: still one line
        print("interrupted again while stopping; what was written so far is kept", file=sys.stderr)
        exit_without_teardown(getattr(interrupt, "exit_code", EXIT_INTERRUPTED))
    exit_without_teardown(0)


if __name__ == "__main__":
    entry()
