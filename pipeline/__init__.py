"""A declarative runner for local language models: Hydra configs in, JSONL transcripts and MLflow
runs out. `python -m pipeline --help` shows the command line; see README.md for a tour."""

from pipeline.cli import early_signals as _early_signals

if _early_signals.is_the_command():  # first, before any heavy import: Ctrl-C now is one line, not a traceback
    _early_signals.exit_at_once("interrupted before the run started; nothing was kept")
