"""Servers for the OpenAI-compatible backend's tests, all on free loopback ports and without network:

- `TransformersServe`: a real `transformers serve` (transformers' `serving` extra) over a local
  model folder, started with HF_HUB_OFFLINE=1 (pipeline.backends.openai.local_server, which
  scripts/bench.py uses too). It lists the folder's absolute path as the model id.
- `FaultProxy`: a stdlib proxy in front of a real server that answers chosen chat requests itself
  (429 with Retry-After, 500, 400), delays them (a server too slow for the timeout), and counts the
  chat requests it sees and how many were in flight at once.
- `StubServer`: a stdlib server scripted per test: an HTML page, a server that wants an API key,
  one with vLLM's /tokenize and max_model_len, one that streams tool calls and reasoning.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.backends.openai.local_server import (  # noqa: F401
    TransformersServe,
    free_port,
    serving_extra_missing,
)

CHAT = "/v1/chat/completions"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def reply(self, status: int, body: bytes | str, content_type: str = "application/json",
              headers: Optional[dict[str, str]] = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        try:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (a timeout test): nothing to answer


class _Running:
    """Start on a free loopback port in a thread; stop when leaving the `with` block."""

    def __init__(self, handler: type) -> None:
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.owner = self  # handlers reach their test's settings through this
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class FaultProxy(_Running):
    """Forwards to `upstream` (host, port); chat requests first meet the scripted `faults`, in order.

    A fault is {"status": 429, "headers": {"Retry-After": "1"}, "body": "..."} (answered here) or
    {"delay": 2.0} (forwarded after a wait); `delay_s` delays every forwarded chat request."""

    def __init__(self, upstream_port: int, faults: list[dict] = (), delay_s: float = 0.0) -> None:
        super().__init__(_ProxyHandler)
        self.upstream_port = upstream_port
        self.faults = deque(faults)
        self.delay_s = delay_s
        self.chat_times: list[float] = []  # arrival of each chat request
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()


class _ProxyHandler(_Quiet):
    def do_GET(self) -> None:
        self.forward(b"")

    def do_POST(self) -> None:
        proxy: FaultProxy = self.server.owner
        body = self.body()
        if self.path != CHAT:
            return self.forward(body)
        with proxy.lock:
            proxy.chat_times.append(time.monotonic())
            fault = proxy.faults.popleft() if proxy.faults else {}
            proxy.in_flight += 1
            proxy.peak = max(proxy.peak, proxy.in_flight)
        try:
            if "status" in fault:
                error = {"error": {"message": fault.get("body", f"injected {fault['status']}"), "type": "injected"}}
                return self.reply(fault["status"], json.dumps(error), headers=fault.get("headers"))
            time.sleep(fault.get("delay", proxy.delay_s))
            self.forward(body)
        finally:
            with proxy.lock:
                proxy.in_flight -= 1

    def forward(self, body: bytes) -> None:
        proxy: FaultProxy = self.server.owner
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "content-length")}
        connection = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()  # whole: streamed answers arrive at once, which these tests allow
            self.reply(response.status, data, response.getheader("content-type", "application/json"))
        except OSError as error:
            self.reply(502, json.dumps({"error": {"message": f"proxy: {error}"}}))
        finally:
            connection.close()


class StubServer(_Running):
    """A scripted server: `routes` maps (method, path) to a function(handler, body) -> (status, body, type, headers)."""

    def __init__(self, routes: dict[tuple[str, str], Callable[[Any, bytes], tuple]]) -> None:
        super().__init__(_StubHandler)
        self.routes = routes
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, headers (names lowercased), body


class _StubHandler(_Quiet):
    def do_GET(self) -> None:
        self.answer(b"")

    def do_POST(self) -> None:
        self.answer(self.body())

    def answer(self, body: bytes) -> None:
        stub: StubServer = self.server.owner
        stub.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        route = stub.routes.get((self.command, self.path.split("?")[0])) or stub.routes.get((self.command, "*"))
        if route is None:
            return self.reply(404, json.dumps({"detail": "Not Found"}))
        status, data, *rest = route(self, body)
        self.reply(status, data, *rest)


def sse(chunks: list[dict]) -> str:
    """A chat completion stream as a server sends it."""
    return "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"


@contextlib.contextmanager
def serving(model_folder, log: Path):
    """`transformers serve` over `model_folder` on a free loopback port, ready, and stopped afterwards."""
    server = TransformersServe(model_folder, log)
    try:
        server.wait()
        yield server
    finally:
        server.stop()
