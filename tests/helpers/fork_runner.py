"""Runs `python -m pipeline` many times cheaply: a process that has imported everything forks one run per request.

Starting Python and importing torch, transformers and MLflow takes seconds; a kill test that
starts 20+ runs would spend its time there, and its kills would mostly land in imports. This
process imports once, then for each JSON request on stdin (`{"cwd", "argv", "log", "kill_after",
"kill_at_records"}`) forks a child that runs `pipeline.__main__.main()` exactly as `python -m
pipeline ARGV` would (same argv handling, same exit codes), SIGKILLs it `kill_after` seconds after
the fork or as soon as a transcript under `cwd/runs/` holds `kill_at_records` lines, whichever
comes first (if it is still running), and answers one JSON line: `{"killed", "exit", "seconds"}`.
A request may name another `signal` to send (SIGINT, SIGTERM) and the transcripts to `watch`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (what a run imports, imported once)
import torch  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
from mlflow.tracking import MlflowClient  # noqa: F401

import pipeline.__main__  # noqa: F401


def run_child(request: dict) -> None:
    code = 1
    try:
        os.chdir(request["cwd"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.argv = ["pipeline", *request["argv"]]
        pipeline.__main__.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - a crash shows in the log and as exit 99
        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _lines(cwd: Path, pattern: str) -> int:
    return max((path.read_bytes().count(b"\n") for path in cwd.glob(pattern)), default=0)


def serve() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            run_child(request)
        # optional: "signal" (a name: SIGINT, SIGTERM) sent instead of SIGKILL, and "watch", the transcripts
        # kill_at_records counts (a glob under cwd; a sweep's jobs: runs/multirun/*/*/<job>/transcript.jsonl)
        signum = getattr(signal, request.get("signal", "SIGKILL"))
        watch = request.get("watch", "runs/*/*/transcript.jsonl")
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if (request.get("kill_after") is not None and time.monotonic() - started >= request["kill_after"]) or \
                    _lines(Path(request["cwd"]), watch) >= request.get("kill_at_records", float("inf")):
                os.kill(pid, signum)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.002)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"killed": code == -signal.SIGKILL, "exit": code,
                          "seconds": time.monotonic() - started}), flush=True)


if __name__ == "__main__":
    serve()
