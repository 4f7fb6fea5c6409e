"""Reading run folders back: what a run was set to, what it planned, what it scored, what it said.

A run folder holds config.json, plan.json, summary.json, status.json and transcript.jsonl (any of
them may be missing: a run stopped early, or one written by an older version). A sweep folder
(runs/multirun/<date>/<time>_<token>) holds one run folder per job (pipeline.tracking.sweep.collect_jobs
finds them, in job order); any other folder of run folders (runs/<date>) is read the same way.
Nothing here writes or compares; pipeline.cli.report does the comparing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.core.errors import UserError
from pipeline.core.files import read_json
from pipeline.core.folder_names import CONFIG_FILE, MULTIRUN_FILE, PLAN_FILE, STATUS_FILE, SUMMARY_FILE, TRANSCRIPT_FILE
from pipeline.core.records import TranscriptRecord
from pipeline.core.transcript import read_records
from pipeline.run.files import run_folder_problem
from pipeline.run.status import planned
from pipeline.tracking.sweep import collect_jobs

RUN_FILES = (CONFIG_FILE, STATUS_FILE, SUMMARY_FILE, TRANSCRIPT_FILE)
SWEEP_MARKER = MULTIRUN_FILE  # Hydra writes it into every sweep folder


@dataclass
class RunFolder:
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # how tables name it: its path below the runs' common folder

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")

    def answers(self) -> Optional[dict[tuple[str, int], TranscriptRecord]]:
        """(sample_id, sample_index) -> the answer record; None without a transcript."""
        path = self.path / TRANSCRIPT_FILE
        if not path.is_file():
            return None
        return {(r.sample_id, r.sample_index): r for r in read_records(path) if r.is_answer}


def is_run_folder(path: Path) -> bool:
    return run_folder_problem(path) is None


def find_runs(paths: list[str]) -> list[RunFolder]:
    """The run folders the paths name (a sweep folder or a folder of runs stands for its runs), labelled.
    A run named itself is read whatever its state; among a sweep's or a folder's runs, those only planned
    (pipeline.until=plan: nothing ran) are passed over."""
    runs: list[RunFolder] = []
    for text in paths:
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise UserError(f"{text}: no such folder")
        if is_run_folder(folder):
            runs.append(read_run(folder))
            continue
        if any((folder / name).is_file() for name in RUN_FILES):  # looks like a run, but is not one of ours
            raise UserError(str(run_folder_problem(folder)))
        jobs = [Path(job["dir"]) for job in collect_jobs(folder)] if (folder / SWEEP_MARKER).is_file() else sorted(
            (p for p in folder.iterdir() if p.is_dir() and is_run_folder(p)),
            key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
        if jobs and all(planned(job) for job in jobs):
            raise UserError(f"{text}: its runs were only planned (pipeline.until=plan), nothing ran: no results "
                            "to report")
        jobs = [job for job in jobs if not planned(job)]
        if not jobs:
            raise UserError(f"{text}: not a run folder (no {', '.join(RUN_FILES)}) nor a sweep folder "
                            "(no job folders in it)")
        runs.extend(read_run(job) for job in jobs)
    _label(runs)
    return runs


def read_run(folder: Path) -> RunFolder:
    def load(name: str) -> dict[str, Any]:
        path = folder / name
        if not path.is_file():
            return {}
        try:
            return read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{path}: not readable JSON ({error})") from None

    return RunFolder(folder, load(CONFIG_FILE), load(PLAN_FILE), load(SUMMARY_FILE), load(STATUS_FILE))


def _label(runs: list[RunFolder]) -> None:
    resolved = [run.path.resolve() for run in runs]
    common = Path(os.path.commonpath(resolved)) if len(runs) > 1 else None
    for run, path in zip(runs, resolved):
        run.label = str(path.relative_to(common)) if common and path != common else path.name
