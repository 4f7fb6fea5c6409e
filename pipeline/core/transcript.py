"""The transcript: a JSON Lines file with one self-describing record per sample, that survives a crash.

Records are appended one whole record per `write` call on a file opened for appending, and each
batch is fsynced before the next starts, so a crash loses at most the batch in flight. A crash
in the middle of a write can leave a torn last line: the writer cuts it off before appending
again. A malformed line anywhere else is corruption: it is reported with its line number, never
skipped. A write that fails (a full disk) is undone to the last whole record and reported as a
StorageError. The transcript is the primary record of a run; MLflow mirrors it.

This module does not decide what to write or which records a resumed run still needs
(pipeline.run.resume does).
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from pipeline.core.errors import StorageError, UserError
from pipeline.core.files import write_text_atomically
from pipeline.core.records import TranscriptRecord

log = logging.getLogger(__name__)


class TranscriptCorrupt(UserError):
    """A line that is not a record, before the last line: something other than a crash damaged the file."""


class TranscriptWriter:
    """Appends records to a transcript file; use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        kept, size = scan(path)
        if path.exists() and path.stat().st_size != size:
            log.warning("%s: removed a torn last line left by an interrupted write (%d whole records kept)",
                        path, len(kept))
            os.truncate(path, size)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = size

    def write_batch(self, records: Iterable[TranscriptRecord | dict[str, Any]], sync: bool = True) -> None:
        """Append the records; with `sync`, fsync them (without, they survive a crash of this process, not of
        the machine, until the next sync: the score stage's journal syncs every so often instead of every line)."""
        lines = [(json.dumps(record if isinstance(record, dict) else record.to_dict(), ensure_ascii=False)
                  + "\n").encode() for record in records]
        for line in lines:
            self._append(line)
            self.written += 1
        if sync:
            self._sync()

    def sync(self) -> None:
        self._sync()

    def _append(self, data: bytes) -> None:
        """One record, whole or not at all: a failed write is cut back to the last whole record."""
        try:
            done = 0
            while done < len(data):  # a regular file takes it in one call; a short write is finished, not lost
                done += _write(self._fd, data[done:])
        except OSError as error:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # the torn tail is cut off when the transcript is next opened
            raise _storage_error(self.path, error, self.written) from error
        self._size += len(data)

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as error:
            raise _storage_error(self.path, error, self.written) from error

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "TranscriptWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write(fd: int, data: bytes) -> int:
    """The one place bytes reach the transcript file (tests inject a full disk here)."""
    return os.write(fd, data)


def _storage_error(path: Path, error: OSError, written: int) -> StorageError:
    what = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else f"the write failed ({error})"
    return StorageError(f"{what} while writing {path}: the records completed before are kept ({written} in this "
                        f"session); free some space, then continue with: python -m pipeline resume={path.parent}")


def scan(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The whole records of a transcript and the byte size they take; ([], 0) when there is no file.

    A last line that is cut short or not JSON is a torn write and left out; a bad line before it,
    or a JSON object without a sample_id anywhere (a dataset's line, say), raises TranscriptCorrupt."""
    if not path.exists():
        return [], 0
    records: list[dict[str, Any]] = []
    size = 0
    with path.open("rb") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        record = _parse(line)
        if record is not None and "sample_id" not in record:  # every record we write names its sample
            raise TranscriptCorrupt(f"{path}:{number}: not a transcript record (a JSON object without sample_id: "
                                    f"{line[:60]!r}); {path.name} holds something other than a run's records")
        if record is None:
            if number == len(lines):
                break  # torn by a crash mid-write: the batch in flight, regenerated on resume
            raise TranscriptCorrupt(
                f"{path}:{number}: not a transcript record ({line[:60]!r}); the file was damaged after it was "
                f"written. Repair or delete that line (the records after it are intact), then run again")
        records.append(record)
        size += len(line)
    return records, size


def _parse(line: bytes) -> Any:
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_transcript(path: Path) -> list[dict[str, Any]]:
    """Every whole record (a torn last line is left out; corruption raises TranscriptCorrupt)."""
    return scan(path)[0]


def read_records(path: Path) -> list[TranscriptRecord]:
    """Every whole record as a TranscriptRecord, the fields older versions did not write filled in."""
    return [TranscriptRecord.from_dict(record) for record in scan(path)[0]]


def rewrite_transcript(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace the transcript with `records`, atomically (temporary file, fsync, rename)."""
    write_text_atomically(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
