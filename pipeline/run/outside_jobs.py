"""How a command ends when it stops outside its jobs: an interrupt, or an error raised by Hydra itself.

Inside a job, pipeline.__main__.hydra_main and the runner handle everything. Around the jobs,
Hydra creates the run folder (its mkdir and `.hydra/` copies), and for a sweep composes, launches
and collects the jobs through its launcher and sweeper. An error there (a full disk when the run
starts, a launcher setting that cannot work such as joblib with n_jobs=0), or Ctrl-C / SIGTERM in
a sweep, would leave Hydra's traceback, a stray folder and the sweep's MLflow parent RUNNING. The
entry point hands both here instead: one line, the sweep's parent run ended (KILLED, or FAILED),
a folder that holds no results removed, and for an interrupted sweep a hint that resumes the
whole sweep (not just the job that was running).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.core.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    StorageError,
    TrackingError,
    UserError,
    describe_config_exception,
)
from pipeline.core.files import read_json
from pipeline.core.folder_names import HYDRA_FOLDER, STATUS_FILE, SWEEP_SUMMARY_FILE, TRACKING_FILE
from pipeline.run.files import SWEEP_MARKERS
from pipeline.run.status import SETUP_FILES, discard, read_status
from pipeline.tracking.sweep import end_launched_sweep, launched_sweep

_run_folder: Optional[Path] = None  # the folder Hydra is creating for a single run (RunFolderRecord)
FORWARD_AFTER_S = 0.5  # Ctrl-C: a job in a worker still running after this did not get it, and gets SIGTERM
WORKER_GRACE_S = 60.0  # the longest the launcher waits for its workers' jobs to end their runs


class RunFolderRecord(Callback):
    """Notes the single run's folder before Hydra creates it, so a failure there can take it away.

    Hydra resolves `hydra.run.dir` (its `${now:}` is cached on the config) to the same path here
    and when it creates the folder."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _run_folder
        _run_folder = Path(str(config.hydra.run.dir)).absolute()


def forget_run_folder() -> None:
    """A new command in this process (a notebook's, a test's second `main()`): the last one's folder is not its."""
    global _run_folder
    _run_folder = None


def stop_workers(signum: int) -> None:
    """Ctrl-C or SIGTERM in the process that launched a sweep whose jobs run in its child processes
    (hydra/launcher=joblib): let each running job end its run before the launcher, on the interrupt
    that follows, kills its workers (joblib does, at once). SIGTERM is passed on to them (`kill`
    reached only this process); Ctrl-C from a terminal reached them already, so a job still running
    after a moment gets SIGTERM then. Until this returns the launcher may start further jobs in
    workers that came free: each gets SIGTERM too. Waits at most WORKER_GRACE_S."""
    sweep = launched_sweep()
    if sweep is None or sweep.sweep_dir is None or not _running_jobs(sweep.sweep_dir, _child_processes()):
        return
    deadline = time.monotonic() + WORKER_GRACE_S
    if signum == signal.SIGINT:
        time.sleep(FORWARD_AFTER_S)
    told: set[tuple[Path, int]] = set()
    while time.monotonic() < deadline:
        running = _running_jobs(sweep.sweep_dir, _child_processes())
        for job, pid in running.items():
            if (job, pid) not in told:
                told.add((job, pid))
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        if not running and all(_closed(job) for job, _ in told):
            return
        time.sleep(0.05)


def _child_processes() -> set[int]:
    """The ids of this process's children (Linux /proc; none elsewhere)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name: state, ppid, ...
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():
            children.add(int(stat.parent.name))
    return children


def _running_jobs(sweep_dir: Path, children: set[int]) -> dict[Path, int]:
    """Job folders whose run is going on in one of `children`, with its process id."""
    jobs = {job: read_status(job) for job in _job_folders(sweep_dir)}
    return {job: status["pid"] for job, status in jobs.items()
            if status.get("state") == "started" and status.get("pid") in children}


def _closed(job: Path) -> bool:
    if read_status(job).get("state") == "started":
        return False
    try:
        return read_json(job / TRACKING_FILE).get("state") != "live" if (job / TRACKING_FILE).is_file() else True
    except ValueError:  # being replaced right now
        return False


def interrupted(interrupt: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM that reached the entry point: end the sweep's parent KILLED; the exit code.

    A single run's job has said what it kept already; an interrupted sweep is continued as a
    whole, its completed jobs skipped and the others run under the same parent."""
    code = getattr(interrupt, "exit_code", EXIT_INTERRUPTED)
    sweep_dir = end_launched_sweep("KILLED")
    if sweep_dir is not None:
        if _holds_results(sweep_dir):
            _say(f"interrupted; the sweep folder keeps what was written: {sweep_dir} (continue the sweep with: "
                 f"python -m pipeline resume={sweep_dir})")
        else:
            _remove_sweep(sweep_dir)
            _say("interrupted before any job started; nothing was kept")
    elif _run_folder is None or not (_run_folder / STATUS_FILE).exists():
        if _run_folder is not None:
            discard(_run_folder)  # stopped while Hydra set the folder up: nothing in it yet
        _say("interrupted before the run started; nothing was kept")  # or while the command line was checked
    else:  # the run had ended (its summary printed): what it wrote stands
        _say(f"interrupted after the run ended; its folder keeps what was written: {_run_folder}")
    return code


def failed(error: Exception) -> int:
    """An error raised outside the jobs (by Hydra, its launcher or sweeper, or a sweep callback):
    print one line, end the sweep's parent FAILED, take away a folder with no results; the exit code."""
    sweep_dir = end_launched_sweep("FAILED")
    folder = sweep_dir or _run_folder
    if sweep_dir is not None:
        kept = _holds_results(sweep_dir)
    else:
        kept = folder is not None and (folder / STATUS_FILE).exists()
    if isinstance(error, OSError) and error.errno == errno.ENOSPC and kept:
        message = (f"run failed: the disk is full ({error.filename or folder}): what was written is kept; free "
                   f"some space, then continue with: python -m pipeline resume={folder}")
        code = EXIT_FAILURE
    elif isinstance(error, OSError) and error.errno == errno.ENOSPC:
        message = (f"run failed: the disk is full while creating {error.filename or folder}: nothing was kept; "
                   "free some space, then run again")
        code = EXIT_FAILURE
    elif isinstance(error, UserError):
        message, code = f"error: {error}", EXIT_USAGE
    elif isinstance(error, (StorageError, TrackingError, OSError)):
        message, code = f"run failed: {error}", EXIT_FAILURE
    elif not kept:
        # Raised by Hydra (its launcher, sweeper, logging set-up) before any job began: its settings cannot work.
        settings = ("the launcher's and sweeper's settings: hydra/launcher=..., hydra.launcher.*, hydra/sweeper=..."
                    if sweep_dir is not None else "the hydra.* settings")
        message = (f"config error: the {'sweep' if sweep_dir is not None else 'run'} could not start: "
                   f"{describe_config_exception(error)} (check {settings})")
        code = EXIT_USAGE
    else:
        message, code = f"run failed: {type(error).__name__}: {describe_config_exception(error)}", EXIT_FAILURE
    if not kept and sweep_dir is not None:
        _remove_sweep(sweep_dir)
    elif not kept and folder is not None:
        discard(folder)
    elif sweep_dir is not None:
        message += f" (the jobs that ran keep their folders in {sweep_dir})"
    _say(message)
    return code


def _say(line: str) -> None:
    """The command's last line, on stderr (the launching process of a sweep has no job's logging set up)."""
    print(line, file=sys.stderr, flush=True)


def _job_folders(sweep_dir: Path) -> list[Path]:
    return [path for path in sweep_dir.iterdir() if path.is_dir() and (path / HYDRA_FOLDER).is_dir()] \
        if sweep_dir.is_dir() else []


def _holds_results(sweep_dir: Path) -> bool:
    """Whether any job of the sweep got as far as writing its status (a result, a failure to keep)."""
    return any((job / STATUS_FILE).exists() for job in _job_folders(sweep_dir))


def _remove_sweep(sweep_dir: Path) -> None:
    """Take away a sweep folder whose jobs wrote nothing: its own files and the jobs' set-up files.
    Anything else in it stays (and the folder with it)."""
    for job in _job_folders(sweep_dir):
        discard(job)
    discard(sweep_dir, (*SWEEP_MARKERS, SWEEP_SUMMARY_FILE, *SETUP_FILES))
