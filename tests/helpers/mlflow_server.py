"""A real `mlflow server` on loopback, for tests of a shared tracking store.

`MlflowServer(folder)` runs `mlflow server --backend-store-uri sqlite:///<folder>/mlflow.db` on a
free port of 127.0.0.1, waits until it answers `/health`, and stops it (`stop()`, or leaving the
`with` block; `stop(crash=True)` kills it at once). `start()` again brings it back on the same port
and database, as a restarted server would. The `mlflow_server` fixture gives one per test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest

STARTUP_TIMEOUT_S = 120  # the first start creates the database schema (alembic migrations)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    def __init__(self, folder: Path, port: Optional[int] = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store_uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "MlflowServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store_uri,
             "--artifacts-destination", (self.folder / "artifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=(self.folder / "server.log").open("ab"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True)  # its own process group: stop() ends the server and its workers
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {STARTUP_TIMEOUT_S} s: {self.log_tail()}")

    def stop(self, crash: bool = False) -> None:
        """End the server: gracefully, or at once as a crashed one (`crash`), its workers too."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if crash else signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def log_tail(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path / "mlflow-server") as server:
        yield server
