"""The transcript: a JSON Lines file with one self-describing record per sample.

Records are appended a batch at a time, and each batch is flushed and fsynced before the next
starts, so a crash loses at most the batch in flight. The transcript is the primary record of a
run; MLflow mirrors it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import jsonlines

from pipeline.records import TranscriptRecord

TRANSCRIPT_NAME = "transcript.jsonl"


class TranscriptWriter:
    """Appends records to `<run_dir>/transcript.jsonl`; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self._writer = jsonlines.Writer(self._file, compact=True, sort_keys=False)
        self.written = 0

    def write_batch(self, records: Iterable[TranscriptRecord]) -> None:
        for record in records:
            self._writer.write(record.to_dict())
            self.written += 1
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._writer.close()
        self._file.close()

    def __enter__(self) -> "TranscriptWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_transcript(path: Path) -> list[dict[str, Any]]:
    with jsonlines.open(path) as reader:
        return list(reader)
