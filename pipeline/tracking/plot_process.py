"""Draws a sweep's comparison plots in other processes, started when the sweep starts.

At the end of a sweep of eight short jobs on a 2-core CPU, importing matplotlib took 0.6 s and
drawing the nine plots 0.8 s of the time the user waits. So up to one process per core (at most
MAX_PROCESSES) is started before the first job, as its own program (`python -m
pipeline.tracking.plot_process`: it shares no threads, locks or open files with the sweep, and never
re-imports the launching script the way multiprocessing's spawn does); each imports matplotlib
while the jobs run. At the end each gets a share of the metrics as JSON on stdin, draws them
with pipeline.tracking.comparison.write_plots and answers with the paths as JSON on stdout. When the
sweep ends without asking (interrupted), their stdin closes and they exit. A share whose process
could not start or does not answer is drawn in the launching process, as before.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from pipeline.tracking.comparison import plot_name, write_plots

log = logging.getLogger(__name__)
MAX_PROCESSES = 4  # nine plots split four ways draw in about the time of three
ANSWER_TIMEOUT_S = 120.0  # the import and a few dozen plots take seconds; past this, draw here


class PlotProcesses:
    def __init__(self, count: Optional[int] = None) -> None:
        wanted = count or min(MAX_PROCESSES, os.cpu_count() or 1)
        self.processes = [process for process in (_start() for _ in range(wanted)) if process is not None]

    def write_plots(self, rows: list[dict[str, Any]], swept: list[str], metrics: list[str],
                    folder: Path) -> list[Path]:
        """Draw the plots, each process a share of the metrics (any share that fails, here); the files
        written, in the order write_plots gives them."""
        if not self.processes:
            return write_plots(rows, swept, metrics, folder)
        shares = [metrics[i::len(self.processes)] for i in range(len(self.processes))]
        with ThreadPoolExecutor(len(self.processes)) as pool:  # the processes draw at the same time
            answers = list(pool.map(lambda process, share: _ask(process, rows, swept, share, folder),
                                    self.processes, shares))
        paths = [path for answer in answers if answer is not None for path in answer]
        for answer, share in zip(answers, shares):
            if answer is None:
                paths += write_plots(rows, swept, share, folder)
        order = {plot_name(metric, key): index for index, (metric, key) in
                 enumerate((metric, key) for metric in metrics for key in swept)}
        return sorted(paths, key=lambda path: order.get(path.name, len(order)))


def _start() -> Optional[subprocess.Popen]:
    try:
        return subprocess.Popen([sys.executable, "-m", "pipeline.tracking.plot_process"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError as error:  # no process could be started: its share is drawn here at the end
        log.debug("plot process not started: %s", error)
        return None


def _ask(process: subprocess.Popen, rows: list[dict[str, Any]], swept: list[str], metrics: list[str],
         folder: Path) -> Optional[list[Path]]:
    """The plots one process drew, or None when it failed to (its share is then drawn here)."""
    request = json.dumps({"rows": rows, "swept": swept, "metrics": metrics, "folder": str(folder)})
    try:
        output, _ = process.communicate(request, timeout=ANSWER_TIMEOUT_S)
        answer = json.loads(output or "{}")
    except subprocess.TimeoutExpired:
        process.kill()
        log.warning("a plot process did not answer in %.0f s; drawing its plots here", ANSWER_TIMEOUT_S)
        return None
    except (OSError, ValueError) as error:
        log.warning("a plot process failed (%s); drawing its plots here", error)
        return None
    if "error" in answer:
        raise RuntimeError(answer["error"])  # the plots themselves failed: drawing them here would too
    if "plots" not in answer:
        log.warning("a plot process ended without plots (exit code %s); drawing its plots here", process.returncode)
        return None
    return [Path(path) for path in answer["plots"]]


def main() -> None:
    import matplotlib.figure  # noqa: F401 - the point of this process: imported while the jobs run

    text = sys.stdin.read()
    if not text.strip():  # the sweep ended without plots (interrupted, or nothing to draw)
        return
    request = json.loads(text)
    try:
        plots = write_plots(request["rows"], request["swept"], request["metrics"], Path(request["folder"]))
        print(json.dumps({"plots": [str(path) for path in plots]}))
    except Exception as error:  # noqa: BLE001 - reported by the launching process
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))


if __name__ == "__main__":
    main()
