"""The handler that writes a run's log file (`run.log`, configured in conf/hydra/job_logging).

A line that cannot be written because the disk is full (or the file went away) is dropped
quietly: logging's default prints a traceback per line to the terminal, burying the one line
that says what happened. The same line still reaches the terminal through the console handler.
Any other logging error (a bad format) is reported as usual.
"""

from __future__ import annotations

import logging
import sys


class RunLogHandler(logging.FileHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)
