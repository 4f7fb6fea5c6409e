"""A run folder's state: one run at a time in it, its status file, and leaving nothing behind.

A run holds an exclusive lock on its folder (flock on the folder itself, released by the kernel
when the process ends, also by SIGKILL) for as long as it runs, so a second process, a resume of
a folder in use included, is refused instead of writing into it. `status.json` says where the run
stands: started, success, failed, interrupted or planned (pipeline.until=resolve or plan: nothing
ran), with the reason; it keeps room for its final state even when the disk fills during the run
(see set_status). A run refused before it
produced anything (a mistake in the config or the inputs) takes its folder away again.

This module does not know what a run writes besides its status (the runner and the stages do).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from pipeline.core.errors import UserError
from pipeline.core.files import read_json, write_text_atomically
from pipeline.core.folder_names import (
    CONFIG_FILE,
    HYDRA_FOLDER,
    INPUTS_FILE,
    PLAN_FILE,
    RUN_LOG_FILE,
    STATUS_FILE,
    TRACKING_FILE,
)

# planned: pipeline.until=resolve or plan stopped it there by request; nothing was run, so it is not a result
# (reports, sweep tables and resume=last pass it over)
STATES = ("started", "success", "failed", "interrupted", "planned")
# status.json is padded to this size, so that on a full disk its final state can still be written over
# it in place (pipeline.core.files' atomic write needs room for a second copy).
STATUS_SIZE = 4096
# What a run writes before its first record; a folder holding only these held no results.
SETUP_FILES = (CONFIG_FILE, STATUS_FILE, PLAN_FILE, INPUTS_FILE, TRACKING_FILE, RUN_LOG_FILE, HYDRA_FOLDER)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the folder for this process, or refuse (UserError) when another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(in_use_message(run_dir)) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def is_locked(run_dir: Path) -> bool:
    """Whether another process holds the folder now."""
    try:
        with locked(run_dir):
            return False
    except UserError:
        return True


def in_use_message(run_dir: Path) -> str:
    status = read_status(run_dir)
    holder = f" (pid {status['pid']} on {status.get('host', '?')})" if status.get("pid") else ""
    return (f"{run_dir} is in use by another run{holder}: wait for it to end, or stop it (Ctrl-C) "
            "before resuming it")


def set_status(run_dir: Path, state: str, reason: str = "") -> None:
    """Write status.json atomically; on a full disk, over the file already there (it keeps its room)."""
    assert state in STATES, state
    path = run_dir / STATUS_FILE
    status = {"state": state, "reason": reason, "time": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
    try:
        write_text_atomically(path, _padded(status, STATUS_SIZE))
    except OSError as error:
        if error.errno != errno.ENOSPC or not path.is_file():
            raise
        _overwrite_in_place(path, status)


def _padded(status: dict[str, Any], size: int) -> str:
    """The status as JSON, spaces after it up to `size` bytes (JSON allows trailing whitespace)."""
    text = json.dumps(status, indent=2)
    return text + " " * max(0, size - 1 - len(text.encode("utf-8"))) + "\n"


def _overwrite_in_place(path: Path, status: dict[str, Any]) -> None:
    """The temporary copy an atomic write needs found no room: write over the existing file, within
    the bytes it already has (no block to allocate), the reason shortened if it would not fit."""
    size = path.stat().st_size
    text = _padded(status, size)
    while len(text.encode("utf-8")) > size and status["reason"]:
        status["reason"] = status["reason"][:len(status["reason"]) - (len(text.encode("utf-8")) - size) - 2] + "…"
        text = _padded(status, size)
    with path.open("r+b") as file:
        file.write(text.encode("utf-8"))
        file.flush()
        os.fsync(file.fileno())


def read_status(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATUS_FILE
    try:
        return read_json(path) if path.is_file() else {}
    except ValueError:  # written atomically, so only a hand edit breaks it: treat as unknown
        return {}


def planned(run_dir: Path) -> bool:
    """Whether the run in `run_dir` was only resolved or planned (pipeline.until=resolve or plan): not a result."""
    return read_status(run_dir).get("state") == "planned"


def discard(run_dir: Path, names: Iterable[str] = SETUP_FILES) -> None:
    """Remove what a refused run wrote, and the folder when nothing else is in it.

    Only this pipeline's own files go (`names`: a run's set-up files by default); anything else in
    the folder (a user's own files in a chosen hydra.run.dir, any record) stays, and so does the
    folder then. The date, `multirun` and `runs` folders above it go too when it leaves them empty."""
    for name in names:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    try:
        run_dir.rmdir()
        parent = run_dir.parent
        while re.fullmatch(r"\d{4}-\d{2}-\d{2}", parent.name) or parent.name in ("multirun", "runs"):
            parent.rmdir()
            parent = parent.parent
    except OSError:
        pass  # not empty: something else lives there
