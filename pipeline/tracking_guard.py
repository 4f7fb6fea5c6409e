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
  with a growing, jittered pause; so is an insert that lost a race with another process (parallel
  jobs logging the same dataset for the first time), a few times.
- Any other failure stops the run (TrackingError) when `tracking.required=true`; with `false` the
  run goes on without MLflow, says so once, and `python -m pipeline.sync <run folder>` uploads it
  later.
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

from pipeline.config import TrackingConfig
from pipeline.errors import TrackingError
from pipeline.files import read_json, write_json
from pipeline.tracking import Tracker, artifact_root, params_for_mlflow

log = logging.getLogger(__name__)
T = TypeVar("T")
TRACKING_FILE = "tracking.json"
LOCK_RETRIES = 10  # about 30 s of waiting on a busy SQLite file, in all
RACE_RETRIES = 3  # a lost insert race is settled by one retry; a true duplicate fails as before
MLFLOW_HTTP_RETRIES = "1"


class GuardedTracker(Tracker):
    def __init__(self, config: TrackingConfig, run_dir: Optional[Path] = None, resuming: bool = False) -> None:
        super().__init__(config)
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
        self._guard(functools.partial(ask_health, self.uri, self.timeout_s))
        self._guard(functools.partial(create_sqlite_store, self.uri))

        def attempt() -> None:
            self.client = None  # a failed attempt must not leave a half-connected client behind
            Tracker.connect(self)
        self._guard(attempt)
        if self.offline_reason:
            self.client = None

    def check_reachable(self) -> None:
        """Fail now (within tracking.timeout_s) rather than after the model loads, when a server is down."""
        if self.enabled and self.uri.startswith(("http://", "https://")):
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
        for attempt in itertools.count():
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - whatever the store raises, the run's fate is decided here
                if (_is_busy(error) and attempt < LOCK_RETRIES) or (_is_race(error) and attempt < RACE_RETRIES):
                    time.sleep(min(5.0, 0.1 * 2 ** attempt) * random.uniform(0.5, 1.5))
                    continue
                self._give_up(error)
                return None
        raise AssertionError("unreachable")

    def _give_up(self, error: Exception) -> None:
        reason = f"MLflow tracking at {self.display_uri} failed: {_first_line(error)}"
        self.offline_reason = reason  # whatever happens next, no more waiting on this store
        self._record()
        if self.required:
            raise TrackingError(f"{reason}. If the store is unreachable, start it or fix tracking.uri; or set "
                                "tracking.required=false to run without it and upload later with "
                                "python -m pipeline.sync <run folder>") from error
        where = self.run_dir if self.run_dir is not None else "<run folder>"
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
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return  # it answered (perhaps asking for credentials): it is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(f"no answer from {uri} within {timeout_s:g} s ({reason})") from None


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


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__


def _read(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRACKING_FILE
    try:
        return read_json(path) if path.is_file() else {}
    except ValueError:
        return {}
