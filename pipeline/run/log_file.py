"""The handler that writes a run's log file (`run.log`, configured in conf/hydra/job_logging).

A line that cannot be written because the disk is full (or the file went away) is dropped
quietly: logging's default prints a traceback per line to the terminal, burying the one line
that says what happened. The same line still reaches the terminal through the console handler.
Any other logging error (a bad format) is reported as usual.

A resume writes nothing into the run folder until it is accepted (pipeline.run.resume): its job
holds the log's lines (`hold_run_log`) and the runner lets them through once the run goes on
(`release_run_log`); a resume refused, or with nothing to do, leaves run.log as it was (its
lines reached the terminal).
"""

from __future__ import annotations

import logging
import sys
from typing import Optional


class RunLogHandler(logging.FileHandler):
    held: Optional[list[logging.LogRecord]] = None  # lines kept back while a resume is not yet accepted

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        else:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)


def _handlers() -> list[RunLogHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, RunLogHandler)]


def hold_run_log() -> None:
    """Keep the run log's lines back from the file until `release_run_log`."""
    for handler in _handlers():
        handler.held = []


def release_run_log() -> None:
    """Write the lines held back, and every line from now on (nothing to do when none are held)."""
    for handler in _handlers():
        held, handler.held = handler.held, None
        for record in held or ():
            handler.emit(record)
