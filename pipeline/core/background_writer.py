"""Write each batch's records on a worker thread, so writing and fsyncing overlap the next batch.

The execute stage hands every finished batch to `BackgroundEmitter`, which passes it to the
transcript writer on one worker thread, in order. Generation releases the GIL, so a batch's
records are encoded and fsynced while the model works on the next one (on a small model the
writing cost about a sixth of the stage). Leaving the `with` block waits until every batch
handed over is on disk, also when the stage stops with an error, and a failed write is raised
in the caller (at the next batch at the latest). It changes no record and no order.

A backend faster than the disk (a server, the fake backend: 100,000 answers in seconds) would
otherwise queue batches without end: at most MAX_PENDING batches wait, the caller waits for room,
and the batches waiting when the worker comes round are written with one fsync (an fsync took
3 ms on the project's machine, 0.2 ms a sample at batches of 16). A batch is on disk when the
next one is handed over or soon after, as before.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Optional

MAX_PENDING = 8  # batches handed over and not yet written: what a crash can lose, what waits in memory


class BackgroundEmitter:
    def __init__(self, emit: Callable[[list[Any]], None]) -> None:
        self._emit = emit
        self._waiting: list[list[Any]] = []  # batches handed over, in order, not yet taken by the worker
        self._busy = 0  # batches the worker is writing now
        self._closed = False
        self._error: Optional[BaseException] = None
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="transcript-writer", daemon=True)
        self._worker.start()

    def __call__(self, records: Iterable[Any]) -> None:
        batch = list(records)
        with self._changed:
            self._changed.wait_for(lambda: self._error is not None or len(self._waiting) + self._busy < MAX_PENDING)
            self._raise_failed()
            self._waiting.append(batch)
            self._changed.notify_all()

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._closed)
                if not self._waiting:  # closed, and everything written
                    return
                batches, self._waiting = self._waiting, []
                self._busy = len(batches)
            try:
                self._emit([record for batch in batches for record in batch])  # one write and one fsync
            except BaseException as error:  # noqa: BLE001 - handed to the caller, which raises it
                with self._changed:
                    self._error, self._waiting, self._busy = error, [], 0
                    self._changed.notify_all()
                return
            with self._changed:
                self._busy = 0
                self._changed.notify_all()

    def _raise_failed(self) -> None:
        if self._error is not None:  # kept: nothing is written after a failed write, every later call says so
            raise self._error

    def close(self) -> None:
        """Wait for every batch handed over; raise the first write that failed."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._worker.join()
        with self._changed:
            self._raise_failed()

    def __enter__(self) -> "BackgroundEmitter":
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            self.close()
        except Exception:
            if kind is None:
                raise
            # the stage failed: what it produced is kept, and its own error is the one that goes through
