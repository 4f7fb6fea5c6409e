"""Draws a sweep's comparison plots in a second process, started when the sweep starts.

At the end of a sweep of eight short jobs on a 2-core CPU, importing matplotlib took 0.6 s of the
time the user waits for the table. This process is spawned (a fresh interpreter: it shares no
threads, locks or open files with the launching one) before the first job, imports matplotlib
while the jobs run, and at the end draws the plots with pipeline.comparison.write_plots. It is a
daemon that ends with the launching process, or when that process closes the pipe. If it cannot
be started or does not answer, the plots are drawn in the launching process, as before.
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

from pipeline.comparison import write_plots

log = logging.getLogger(__name__)
ANSWER_TIMEOUT_S = 120.0  # the import and a few dozen plots take seconds; past this, draw here


class PlotProcess:
    def __init__(self) -> None:
        self._connection: Optional[Connection] = None
        try:
            context = multiprocessing.get_context("spawn")
            self._connection, theirs = context.Pipe()
            self.process = context.Process(target=_serve, args=(theirs,), daemon=True, name="sweep-plots")
            self.process.start()
            theirs.close()
        except OSError as error:  # no process could be started: the plots are drawn here at the end
            log.debug("plot process not started: %s", error)
            self._connection = None

    def write_plots(self, rows: list[dict[str, Any]], swept: list[str], metrics: list[str],
                    folder: Path) -> list[Path]:
        """Draw the plots in the plot process (in this one if that fails); the files written."""
        try:
            if self._connection is not None:
                self._connection.send((rows, swept, metrics, folder))
                if self._connection.poll(ANSWER_TIMEOUT_S):
                    drawn, answer = self._connection.recv()
                    if not drawn:
                        raise RuntimeError(answer)  # the plots themselves failed: drawing here would too
                    return answer
                log.warning("the plot process did not answer in %.0f s; drawing the plots here", ANSWER_TIMEOUT_S)
        except (OSError, EOFError) as error:  # it died
            log.warning("the plot process failed (%s); drawing the plots here", error)
        finally:
            self.close()
        return write_plots(rows, swept, metrics, folder)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()  # the process sees the pipe closed and ends
            self._connection = None


def _serve(connection: Connection) -> None:
    import matplotlib.figure  # noqa: F401 - the point of this process: imported while the jobs run

    try:
        request = connection.recv()
    except EOFError:  # the sweep ended without plots (interrupted, or nothing to draw)
        return
    try:
        connection.send((True, write_plots(*request)))
    except Exception as error:  # noqa: BLE001 - reported by the launching process
        connection.send((False, f"{type(error).__name__}: {error}"))
