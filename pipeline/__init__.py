"""A declarative runner for local language models: Hydra configs in, JSONL transcripts and MLflow
runs out. `python -m pipeline --help` shows the command line; see README.md for a tour."""
