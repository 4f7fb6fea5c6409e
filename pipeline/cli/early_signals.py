"""Ctrl-C and SIGTERM before the command has anything to keep: one line, exit 130 or 143, at once.

Python's own Ctrl-C handler raises KeyboardInterrupt wherever the program is; in the first second
or two of `python -m pipeline` (importing Hydra, MLflow, torch) that printed a traceback through
library code, and SIGTERM's default ended the process without a word (exit -15). So
pipeline/__init__.py installs these handlers first, when this process is the command (`python -m
pipeline` or `llm-pipeline`), before anything heavy is imported: nothing has been written yet,
so the process may end right away. pipeline.__main__.main replaces them with its own once it
starts (those let a run end its records and its MLflow run), and its exit installs them again, for
the moment when everything is written.

Not here: a signal in a run (pipeline.__main__, pipeline.run.outside_jobs). Out of reach: the
interpreter's own start-up before pipeline/__init__.py runs (some tens of milliseconds, its
`site` module), where Ctrl-C is still Python's.
"""

from __future__ import annotations

import _signal  # the interpreter's own (already loaded): the `signal` module takes a while to import
import os
import sys

# as pipeline.core.errors' EXIT_INTERRUPTED and EXIT_TERMINATED (128 + the signal's number)
EXIT_CODES = {_signal.SIGINT: 130, _signal.SIGTERM: 143}
COMMAND = "llm-pipeline"  # pyproject.toml's console script
_message = "interrupted before the run started; nothing was kept"


def is_the_command() -> bool:
    """Whether this process is `python -m pipeline` (being located: runpy has set argv[0] to -m) or `llm-pipeline`."""
    if sys.argv[:1] == ["-m"]:
        args = getattr(sys, "orig_argv", [])
        return any(arg == "-m" and args[i + 1:i + 2] == ["pipeline"] or arg == "-mpipeline"
                   for i, arg in enumerate(args))
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == COMMAND


def exit_at_once(message: str) -> None:
    """From now on Ctrl-C and SIGTERM print `message` and end the process with 130 or 143, without unwinding.
    Ctrl-C stays ignored where the process was started with it ignored (`cmd &` in a script)."""
    global _message
    _message = message
    _signal.signal(_signal.SIGTERM, _exit)
    if _signal.getsignal(_signal.SIGINT) is not _signal.SIG_IGN:
        _signal.signal(_signal.SIGINT, _exit)


def _exit(signum: int, frame: object) -> None:
    os.write(2, f"{_message}\n".encode())
    os._exit(EXIT_CODES.get(signum, 128 + signum))
