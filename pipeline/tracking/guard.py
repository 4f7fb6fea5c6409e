"""MLflow that cannot hang a run, lose it to a busy SQLite file, or lose track of it across resumes.

`GuardedTracker` is the Tracker with every call to the store guarded:

- Short timeouts: a tracking server is asked for `/health` first (`tracking.timeout_s`), and
  MLflow's own HTTP timeout and retries are cut from minutes to seconds, so a dead server is an
  error within seconds.
- A new SQLite store is created whole under a temporary name, then linked into place: a process
  killed while MLflow builds its tables leaves no half-built database, and parallel first runs
  do not race.
- A SQLite store busy with another process ("database is locked": MLflow's SQLite sessions wait
  20 s on a lock, but SQLite gives up at once where two transactions would deadlock) is retried
  with a growing, jittered pause for up to LOCK_WAIT_S; so is an insert that lost a race with
  another process (parallel jobs logging the same dataset for the first time), a few times.
- A SQLite store that cannot work, as its path shows before anything runs (a folder, not a
  database, read-only, in a folder that cannot be written), is a mistake in tracking.uri
  (`store_problem`): the command-line check refuses it before anything is created.
- Any other failure stops the run (TrackingError) when `tracking.required=true`; with `false` the
  run goes on without MLflow, says so once, and `python -m pipeline.sync <run folder>` uploads it
  later. Either way the user gets one line in our words (`describe_store_error`), not SQLAlchemy's.
- `tracking.json` in the run folder records the run's MLflow run id, so a resumed run continues
  the same MLflow run (found by its `run_dir` tag when a crash came before that file was written).

It adds no MLflow features of its own: what is logged is the Tracker's business.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from pipeline.core.config import DatasetConfig, TrackingConfig
from pipeline.core.errors import TrackingError, UserError, first_line
from pipeline.core.files import read_json, write_json
from pipeline.core.folder_names import TRACKING_FILE
from pipeline.core.redact import hide_credentials
from pipeline.tracking.runs import Tracker, artifact_root, params_for_mlflow, quiet_mlflow_logs

log = logging.getLogger(__name__)
T = TypeVar("T")
LOCK_RETRIES = 10  # tries of a call that met a busy SQLite file (each try waits up to 20 s in SQLite itself) ...
LOCK_WAIT_S = 60.0  # ... and no more tries once this long has passed: a lock that stays is an error, not a hang
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
RACE_RETRIES = 3  # a lost insert race is settled by one retry; a true duplicate fails as before
MLFLOW_HTTP_RETRIES = "1"


class GuardedTracker(Tracker):
    def __init__(self, config: TrackingConfig, run_dir: Optional[Path] = None, resuming: bool = False,
                 experiment_id: Optional[str] = None) -> None:
        super().__init__(config, experiment_id)
        self.resuming = resuming  # look for the MLflow run an earlier start in run_dir began
        self.required = config.required
        self.timeout_s = config.timeout_s
        self.run_dir = run_dir
        self.offline_reason: Optional[str] = None  # why MLflow was left behind (tracking.required=false)
        self._logged_params: dict[str, str] = {}  # what a continued run already holds

    def connect(self) -> None:
        if not self.enabled or self.client is not None or self.offline_reason:
            return
        _short_http_timeouts(self.timeout_s)
        quiet_mlflow_logs()  # before the first store call: a failure is told in our words, not in MLflow's log
        self._guard(functools.partial(ask_health, self.uri, self.timeout_s))
        self._guard(functools.partial(create_sqlite_store, self.uri))

        def attempt() -> None:
            self.client = None  # a failed attempt must not leave a half-connected client behind
            Tracker.connect(self)
        self._guard(attempt)
        if self.offline_reason:
            self.client = None

    def check_reachable(self) -> None:
        """Fail now (within tracking.timeout_s) rather than after the model loads, when a server is down,
        or when a SQLite store's path shows it cannot work (a UserError: a mistake in tracking.uri).
        With tracking.required=false either goes on without MLflow from here."""
        if not self.enabled or self.offline_reason:
            return
        problem = store_problem(self.uri)
        if problem and self.required:
            raise UserError(f"tracking.uri={self.display_uri!r}: {problem}")
        if problem:
            self._give_up(ValueError(problem))
        elif self.uri.startswith(("http://", "https://")):
            self.connect()

    def start(self, run_name: str, tags: dict[str, str], parent_run_id: Optional[str] = None) -> None:
        if not self.enabled:
            return
        self.connect()
        if self.offline_reason:
            self._record()
            return
        previous = self._previous_run()
        if previous:
            self._guard(functools.partial(self.client.update_run, previous, status="RUNNING"))
            self.run_id = previous
            self._logged_params = self._guard(lambda: self.client.get_run(previous).data.params) or {}
            from mlflow.entities import RunTag

            self._guard(lambda: self.client.log_batch(previous, tags=[RunTag(k, str(v)) for k, v in tags.items()]))
            log.info("continuing MLflow run %s", previous)
        else:
            self._guard(functools.partial(Tracker.start, self, run_name, tags, parent_run_id))
        self._record()

    def reopen(self, run_id: str) -> None:
        """Take up an existing run again (a resumed sweep's parent): RUNNING until finished."""
        self.connect()
        if not self.offline_reason:
            self._guard(functools.partial(self.client.update_run, run_id, status="RUNNING"))
            self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """The run's settings; `resume` is how it was started, not a setting. A continued run keeps its
        first values (MLflow refuses to change a param): a setting that resume may change (tracking.*,
        execute.*) is logged as it was when the run began."""
        params = {key: value for key, value in params.items() if key != "resume"}
        logged = params_for_mlflow(params)
        changed = [key for key, value in logged.items() if self._logged_params.get(key, value) != value]
        if changed:
            log.info("resumed with other values for %s; MLflow keeps the first ones", ", ".join(changed))
        super().log_params({key: value for key, value in params.items() if key not in changed})

    def log_traces(self, transcript: Path) -> None:
        if not self.offline_reason:  # a store already given up on is not asked again, trace by trace
            super().log_traces(transcript)

    def _batch(self, params: Any = (), metrics: Any = ()) -> None:
        self._guard(functools.partial(Tracker._batch, self, params, metrics))

    def log_dataset(self, config: DatasetConfig, samples: int) -> None:
        # parallel jobs logging the same dataset race to insert it: the loser's retry finds it (_is_race)
        self._guard(functools.partial(Tracker.log_dataset, self, config, samples))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._guard(functools.partial(Tracker.set_tags, self, tags))

    def log_artifact(self, path: Path, subfolder: Optional[str] = None) -> None:
        self._guard(functools.partial(Tracker.log_artifact, self, path, subfolder))

    def finish(self, status: str) -> None:
        self._guard(functools.partial(Tracker.finish, self, status))
        self._record(finished=status)

    def _previous_run(self) -> Optional[str]:
        """This run folder's MLflow run, when a run in it was tracked before (a resume)."""
        if self.run_dir is None or not self.resuming:
            return None
        recorded = _read(self.run_dir).get("run_id")
        if recorded and self._guard(lambda: self._exists(recorded)):
            return recorded
        folder = str(self.run_dir)
        if "'" in folder:
            return None
        found = self._guard(lambda: self.client.search_runs([self.experiment_id], f"tags.run_dir = '{folder}'",
                                                            max_results=1))
        return found[0].info.run_id if found else None

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.experiment_id == self.experiment_id
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise

    def _guard(self, call: Callable[[], T]) -> Optional[T]:
        """Run one call to the store: retried while SQLite is busy; a failure stops the run or goes offline."""
        if self.offline_reason:
            return None
        started = time.monotonic()
        for attempt in itertools.count():
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - whatever the store raises, the run's fate is decided here
                waited = time.monotonic() - started
                if (_is_busy(error) and attempt < LOCK_RETRIES and waited < LOCK_WAIT_S) or \
                        (_is_race(error) and attempt < RACE_RETRIES):
                    time.sleep(min(5.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.5))
                    continue
                self._give_up(error, waited)
                return None
        raise AssertionError("unreachable")

    def _give_up(self, error: Exception, waited: float = 0.0) -> None:
        description, advice = describe_store_error(error, self.uri, waited)
        description = hide_credentials(description)  # an error's text may quote the URI, password and all
        reason = f"MLflow tracking at {self.display_uri} failed: {description}"
        self.offline_reason = reason  # whatever happens next, no more waiting on this store
        self._record()
        where = self.run_dir if self.run_dir is not None else "<run folder>"
        if self.required:
            raise TrackingError(f"{reason}. {advice}; or set tracking.required=false to run without it and upload "
                                f"later with python -m pipeline.sync {where}") from error
        log.warning("%s; going on without MLflow (tracking.required=false): upload later with "
                    "python -m pipeline.sync %s", reason, where)

    def _record(self, finished: Optional[str] = None) -> None:
        """Write tracking.json: where this run is (or is to be) recorded in MLflow, and whether it got there."""
        if self.run_dir is None or not self.enabled:
            return
        state = "offline" if self.offline_reason else ("finished" if finished else "live")
        write_json(self.run_dir / TRACKING_FILE, {
            "uri": self.display_uri, "experiment": self.experiment_name, "experiment_id": self.experiment_id,
            "run_id": self.run_id, "state": state, "reason": self.offline_reason or "", "status": finished})


def ask_health(uri: str, timeout_s: float) -> None:
    """A tracking server answers its /health address within timeout_s; other stores are opened by MLflow."""
    if not uri.startswith(("http://", "https://")):
        return
    scheme, _, rest = uri.partition("://")
    # urllib takes `user:password@` for part of the host name; /health asks for no credentials anyway
    address = f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}"
    path = rest.split("/", 1)[1] if "/" in rest else ""
    try:
        urllib.request.urlopen(f"{address}/{path}".rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answered (perhaps asking for credentials): it is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(f"no answer from {hide_credentials(uri)} within {timeout_s:g} s ({reason})") from None


def create_sqlite_store(uri: str) -> None:
    """Create a new SQLite store whole or not at all: built under a temporary name, then linked into place.

    MLflow builds a new database in some thirty migration steps; a process killed among them would
    leave a database every later run refuses ("out-of-date database schema"), and two processes
    creating it at once race. Here the loser of a race keeps the winner's file."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        SqlAlchemyStore(f"sqlite:///{temporary}", artifact_root(uri)).engine.dispose()
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first
    finally:
        temporary.unlink(missing_ok=True)


def check_tracking_store(composed: Any) -> Optional[str]:
    """The command-line check: why the first job's MLflow store cannot be written, as `tracking.uri=...: why`;
    None when it can, or when tracking is off or not required (the run then goes on without MLflow).
    `composed` is the job's composed config (a DictConfig), read before Hydra creates anything."""
    tracking = getattr(composed, "tracking", None)
    if tracking is None or not tracking.get("enabled", True) or not tracking.get("required", True):
        return None
    uri = str(tracking.get("uri", ""))
    problem = store_problem(uri)
    return f"tracking.uri={hide_credentials(uri)!r}: {problem}" if problem else None


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///` URI (relative to the launch folder), else None; creates nothing."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).absolute() if path and path != ":memory:" else None


def store_problem(uri: str) -> Optional[str]:
    """Why the SQLite store at `uri` cannot be written, as far as its path shows, and what to do; None
    when it can (or when it is not a SQLite store: a server is asked at the start of the run)."""
    path = sqlite_path(uri)
    found = _path_problem(path) if path is not None else None
    return f"{found[0]}: {found[1][0].lower()}{found[1][1:]}" if found else None


def _path_problem(path: Path) -> Optional[tuple[str, str]]:
    """(what is wrong, what to do) with the SQLite file at `path`, or None.

    Read-only is asked of the operating system (`os.access`), which also answers for root on a
    read-only file system or an immutable file; SQLite needs the folder writable too, for the
    journal it writes beside the database. A lock is not looked for: it may be gone in a moment."""
    if path.is_dir():
        return f"{path} is a folder, not a SQLite file", "Name a file, such as sqlite:///runs/mlflow.db"
    if path.exists():
        try:
            with path.open("rb") as file:
                head = file.read(len(SQLITE_HEADER))
        except OSError as error:
            return f"cannot read the SQLite file {path} ({error.strerror})", "Make it readable or choose another store"
        if head and head != SQLITE_HEADER:
            return (f"{path} is not a SQLite database (it starts with {head[:8]!r})",
                    "Point tracking.uri at an MLflow store, or at a new file")
        if not os.access(path, os.W_OK):
            return (f"the SQLite file {path} is read-only",
                    "Make it writable, or point tracking.uri at a store you can write")
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return (f"the folder of the SQLite file {path} is read-only (SQLite writes its journal there)",
                    "Make it writable, or point tracking.uri at a store in a folder you can write")
        return None
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create the SQLite file {path}: {existing} is a file, not a folder", "Choose another path"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"cannot create the SQLite file {path}: {existing} is read-only",
                "Make it writable or choose another path")
    return None


# SQLite's own words for what went wrong -> ours, and what to do ({path}: the database file).
SQLITE_FAILURES = (
    ("readonly database", "the store is read-only ({path} or its folder cannot be written)",
     "Make the file and its folder writable, or point tracking.uri at a store you can write"),
    ("unable to open database file", "cannot open the SQLite file {path} (its folder is missing, read-only, or "
     "in the way)", "Fix tracking.uri or the folder's permissions"),
    ("file is not a database", "{path} is not a SQLite database",
     "Point tracking.uri at an MLflow store, or at a new file"),
    ("malformed", "the SQLite file {path} is damaged", "Restore it from a copy, or point tracking.uri at a new file"),
    ("database or disk is full", "the disk holding {path} is full", "Free some space, then resume the run"),
    ("disk I/O error", "the disk holding {path} failed a read or write", "Check the disk, then resume the run"),
)


def describe_store_error(error: BaseException, uri: str, waited: float = 0.0) -> tuple[str, str]:
    """(what went wrong, what to do), each in a few words of ours, for an error a store call raised.

    MLflow wraps SQLite's error in SQLAlchemy's, whose first line can be about "autoflush"; the
    cause is found by its own words anywhere in the chain."""
    text = " ".join(_chain_texts(error))
    path = sqlite_path(uri)
    if path is not None:
        found = _path_problem(path)  # what the path shows now is the most precise account (read-only, ...)
        if found:
            return found
        if _is_busy(error) or "database is locked" in text:
            return (f"the SQLite file {path} stayed locked by another process for {waited:.0f} s",
                    "Let that process finish (`fuser` names it), or point tracking.uri at another store, "
                    "then resume the run")
        for words, description, advice in SQLITE_FAILURES:
            if words in text:
                return description.format(path=path), advice
    advice = ("If the server is unreachable, start it or fix tracking.uri" if uri.startswith(("http://", "https://"))
              else "Fix the store or tracking.uri")
    return first_line(error), advice


def _chain_texts(error: BaseException) -> list[str]:
    """The messages of an error and of everything it was raised from (SQLAlchemy keeps the driver's in .orig)."""
    texts, seen, todo = [], set(), [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts.append(str(current))
        todo += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return texts


def _short_http_timeouts(timeout_s: float) -> None:
    """MLflow waits 120 s per request and retries 7 times by default (minutes); the user's own settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", MLFLOW_HTTP_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def _is_busy(error: Exception) -> bool:
    text = str(error)
    return "database is locked" in text or "database table is locked" in text


def _is_race(error: Exception) -> bool:
    """Two processes inserted the same row at once, the first time parallel jobs log the same dataset
    (MLflow's log_inputs looks the dataset up, then inserts it): tried again, the loser finds it."""
    text = str(error)
    return "UNIQUE constraint failed" in text or "duplicate key value violates unique constraint" in text


def _read(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRACKING_FILE
    try:
        return read_json(path) if path.is_file() else {}
    except ValueError:
        return {}
