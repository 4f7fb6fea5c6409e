"""Ctrl-C and SIGTERM in the first seconds of `python -m pipeline`: while it imports, checks the command line
and composes the config, or as the run begins. Wherever the signal lands: exit 130 (Ctrl-C) or 143
(SIGTERM), no traceback, the last line says what happened, and nothing half-written is left: either no
folder at all, or a run folder marked interrupted that says how to continue (tests/run/test_signals.py
covers a signal during execute and in a sweep).

The moments are counted from when the command begins to import its libraries (a compiled module
shows in /proc/PID/maps): before that the interpreter is still starting (its `site` module), where
Ctrl-C is Python's and out of the program's reach.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.config import register
from tests.conftest import pipeline_env, run_main

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
CODES = {"SIGINT": 130, "SIGTERM": 143}
BEFORE = "interrupted before the run started; nothing was kept"


def importing(pid: int) -> bool:
    """Whether the process has begun importing the libraries the command needs: a compiled module of
    site-packages is mapped (the interpreter's start-up, its `site` module, maps none)."""
    return any("site-packages" in line and ".so" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def signalled(cwd: Path, name: str, delay: float) -> tuple[int, str]:
    """`python -m pipeline` in cwd, sent the signal `delay` seconds after its imports began: (exit code, stderr)."""
    # Ctrl-C as from a terminal even where this test runs with it ignored (started as `cmd &` in a script)
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "dataset.limit=3", "tracking=none"], cwd=cwd,
                               env=pipeline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not importing(process.pid):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(getattr(signal, name))
    _, err = process.communicate(timeout=300)
    return process.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_in_the_first_seconds_is_one_line_and_its_exit_code(tmp_path, name):
    landed = []
    for delay in (0.0, 0.05, 0.2, 0.5, 1.0, 2.0, 4.0):
        cwd = tmp_path / str(delay)
        cwd.mkdir()
        code, err = signalled(cwd, name, delay)
        assert code == CODES[name] and "Traceback" not in err, (delay, err)
        last = err.strip().splitlines()[-1]
        folders = [p for p in cwd.glob("runs/*/*") if p.is_dir()]
        if not folders:  # stopped before Hydra made the run folder, or the folder taken away again
            assert err.strip() == BEFORE and list(cwd.iterdir()) in ([], [cwd / "runs"]), (delay, err)
            assert not any(p.is_file() for p in cwd.rglob("*")), delay
        else:
            (folder,) = folders
            assert json.loads((folder / "status.json").read_text())["state"] == "interrupted", (delay, err)
            assert last.endswith(f"(continue with: python -m pipeline resume={folder})"), (delay, err)
        landed.append("before" if not folders else "in the run")
    assert "before" in landed  # the early moments were tried (the later ones may land in the run on a fast machine)


def test_ctrl_c_while_the_config_composes_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """Deterministically in the composition: the check of the command line is where Ctrl-C arrives."""
    import pipeline.__main__ as entry

    def composing(argv):
        signal.raise_signal(signal.SIGINT)  # runs the entry point's handler, as a Ctrl-C from the terminal does
        raise AssertionError("not reached: the handler raises")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(entry, "check_jobs", composing)
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        code, err = run_main(["dataset.limit=3"], monkeypatch, capsys)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
        register()
    assert code == 130 and err.strip() == BEFORE and list(tmp_path.iterdir()) == []
