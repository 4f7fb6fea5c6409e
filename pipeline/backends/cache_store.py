"""The response cache's storage: JSON entries by key in a diskcache folder (SQLite index, large values as files).

Why diskcache and not our own files or sqlite3 directly (docs/cache.md has the longer version): it is
process- and thread-safe (SQLite transactions in WAL mode, a busy timeout), so joblib workers and
SLURM jobs can share one folder; an entry is visible only once its transaction commits, so a process
killed mid-write leaves no half entry (at worst an orphaned value file, which is never served); it
keeps the folder under a size limit by evicting the oldest entries; and it is small and pure Python.

Values are stored as JSON text, never pickled, and a pickled key or value found in the folder (diskcache's
default for objects, written by something else) is refused unread: a shared cache folder must not be a
way to run code in whoever reads it. Each entry carries its own key and format number and is checked
when read; anything that does not read back whole is a miss. The store knows nothing of backends or
requests (pipeline.backends.cache makes the keys and the entries).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Optional

import diskcache
from diskcache.core import MODE_PICKLE

from pipeline.core.config import CacheConfig, parse_bytes
from pipeline.core.errors import UserError
from pipeline.core.files import cache_dir

log = logging.getLogger(__name__)
FORMAT = 1  # of the entries; an entry of another format is a miss
TIMEOUT_S = 60.0  # how long a write waits for another process's transaction before it gives up (and is skipped)
STORE_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout)  # a store that cannot be read or written


def default_folder() -> Path:
    return cache_dir() / "responses"


def folder_of(settings: CacheConfig) -> Path:
    return Path(settings.dir).expanduser().absolute() if settings.dir else default_folder()


class Unpickled(Exception):
    """A pickled key or value in the folder: not written by this store, and never unpickled."""


class _TextDisk(diskcache.Disk):
    """diskcache's storage of keys and values, refusing to unpickle anything."""

    def fetch(self, mode: int, filename: Optional[str], value: Any, read: bool) -> Any:
        if mode == MODE_PICKLE:
            raise Unpickled("a pickled value")
        return super().fetch(mode, filename, value, read)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise Unpickled("a pickled key")
        return super().get(key, raw)


class ResponseStore:
    """Entries (JSON objects) by key in one folder, shared safely by every process that opens it."""

    def __init__(self, folder: Path, size_limit: Optional[int] = None) -> None:
        """`size_limit` in bytes is kept in the folder for every later writer; None: the folder's own (to look)."""
        self.folder = folder
        self._warned = False
        limit = {} if size_limit is None else {"size_limit": size_limit}
        try:
            self._cache = diskcache.Cache(str(folder), timeout=TIMEOUT_S, disk=_TextDisk, **limit,
                                          eviction_policy="least-recently-stored")  # a read costs no write
        except STORE_ERRORS as error:
            raise UserError(f"cache.dir={folder}: the response cache cannot be opened there ({error}); "
                            "set cache.dir to a folder you can write, or cache.enabled=false")

    @classmethod
    def open(cls, settings: CacheConfig) -> "ResponseStore":
        size = parse_bytes(settings.size_limit)
        assert size is not None, "CacheConfig checks its size limit"
        return cls(folder_of(settings), size)

    def get(self, key: str) -> Optional[dict[str, Any]]:
        """The entry stored under `key`; None when there is none, or none that reads back whole."""
        try:
            text = self._cache.get(key)
        except Unpickled:
            return None
        except STORE_ERRORS as error:
            self._warn("read", error)
            return None
        if not isinstance(text, str):
            return None
        try:
            entry = json.loads(text)
        except ValueError:
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or entry.get("format") != FORMAT:
            return None
        return entry

    def put_many(self, entries: dict[str, dict[str, Any]]) -> None:
        """Store the entries in one transaction: all of them or, if the process dies first, none.

        A store that cannot be written (a full disk, a lock held past the timeout) costs this run nothing
        but the entries: it is warned about once and the run goes on."""
        if not entries:
            return
        try:
            with self._cache.transact():
                for key, entry in entries.items():
                    self._cache.set(key, json.dumps({**entry, "key": key, "format": FORMAT}, sort_keys=True))
        except STORE_ERRORS as error:
            self._warn("write", error)

    def entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(key, entry) for every entry that reads back whole, oldest first."""
        try:
            for key in self._cache.iterkeys():
                entry = self.get(key)
                if entry is not None:
                    yield key, entry
        except Unpickled:  # keys come in order from one cursor: a pickled one ends the listing, unread
            return

    def stats(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "entries": len(self._cache), "bytes": self._cache.volume(),
                "size_limit": self._cache.size_limit}

    def clear(self) -> int:
        """Remove every entry, and the value files a killed writer left without an entry; the number of entries."""
        removed = self._cache.clear()
        for _ in range(3):  # a removed file can leave its folder empty, which the next pass removes
            if not self._cache.check(fix=True):
                break
        return removed

    def close(self) -> None:
        self._cache.close()

    def _warn(self, what: str, error: BaseException) -> None:
        if not self._warned:
            log.warning("response cache at %s: could not %s (%s); going on without it", self.folder, what, error)
            self._warned = True
