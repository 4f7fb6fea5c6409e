"""Write each batch's records on a worker thread, so writing and fsyncing overlap the next batch.

The execute stage hands every finished batch to `BackgroundEmitter`, which passes it to the
transcript writer on one worker thread, in order. Generation releases the GIL, so a batch's
records are encoded and fsynced while the model works on the next one (on a small model the
writing cost about a sixth of the stage). Leaving the `with` block waits until every batch
handed over is on disk, also when the stage stops with an error, and a failed write is raised
in the caller (at the next batch at the latest). It changes no record and no order.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable


class BackgroundEmitter:
    def __init__(self, emit: Callable[[list[Any]], None]) -> None:
        self._emit = emit
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transcript-writer")
        self._pending: list[Future] = []

    def __call__(self, records: Iterable[Any]) -> None:
        self._raise_failed()
        self._pending.append(self._pool.submit(self._emit, list(records)))

    def _raise_failed(self) -> None:
        done = [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if not future.done()]
        for future in done:
            future.result()  # re-raises a failed write here, in the caller

    def close(self) -> None:
        """Wait for every batch handed over; raise the first write that failed."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pending = []
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "BackgroundEmitter":
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        try:
            self.close()
        except Exception:
            if kind is None:
                raise
            # the stage failed: what it produced is kept, and its own error is the one that goes through
