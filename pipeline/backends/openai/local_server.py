"""A real OpenAI-compatible server on this machine for tests and `make bench`: `transformers serve`
(transformers' `serving` extra) over a local model folder, offline, on a free loopback port.

Kept in the package (not under tests/) so scripts/bench.py and the tests start it the same way.
It lists the folder's absolute path as the model id.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(process: subprocess.Popen, port: int, path: str, what: str, log: Path, timeout: float,
                         poll_s: float = 0.25) -> None:
    """Until GET `path` on the loopback `port` answers 200; a RuntimeError with the log's tail when `process` exits
    first or `timeout` seconds pass (a server's start: model load, engine build)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{_tail(log)}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"{what} did not answer {path} in {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def serving_extra_missing() -> Optional[str]:
    """Why `transformers serve` cannot run here, or None when it can."""
    try:
        import fastapi  # noqa: F401
        import openai  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        return f"transformers' serving extra is not installed ({error.name}): pip install 'transformers[serving]'"
    return None


class TransformersServe:
    """`transformers serve MODEL --host 127.0.0.1 --port P --device cpu`, offline, until stopped.

    OMP_NUM_THREADS=1: the server shares the machine with its client (and, in tests, other workers)."""

    def __init__(self, model: Path, log: Path, port: Optional[int] = None) -> None:
        self.model = str(Path(model).resolve())  # the id /v1/models lists
        self.port = port or free_port()  # a port: the same server again, after a test killed it
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        script = Path(sys.executable).parent / "transformers"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "transformers.cli.transformers"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [*command, "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait(self, timeout: float = 120) -> None:
        wait_until_answering(self.process, self.port, "/health", "transformers serve", self.log, timeout)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "TransformersServe":
        try:
            self.wait()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
