"""What belongs to a run folder: the files a run writes, and which folders a run may be put in.

A run (or a sweep) writes only into a folder of its own: one that does not exist yet, an empty
one, or (with `resume=`) one that already holds one of this pipeline's runs (sweeps). The folder
the command was launched from, a folder above it, and a folder that holds anything else (a model
folder, a project) are refused before Hydra creates anything, because Hydra would write into
them and the run would upload them. `folder_problem` says why a folder cannot be used;
`run_folder_problem` why a folder given to a command that reads runs is not one of our run folders;
`run_files` lists what a run wrote, the only files uploaded to MLflow as its artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pipeline.core.folder_names import (
    CONFIG_FILE,
    CONVERSATION_FILE,
    HYDRA_FILES,
    HYDRA_FOLDER,
    JUDGEMENTS_FILE,
    LOAD_FILE,
    MULTIRUN_FILE,
    PLAN_FILE,
    SCORES_FILE,
    STAGES_FILE,
    SOURCE_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    SWEEP_FILE,
    TRACKING_FILE,
    TRANSCRIPT_FILE,
)
from pipeline.run.status import STATES

# Every file a run (pipeline.run.runner, pipeline.run.rescore, pipeline.cli.chat, tracking) writes at the top of
# its folder; `*.log` is Hydra's job log (`<hydra.job.name>.log`). Anything else there is not ours.
RUN_FILE_NAMES = (CONFIG_FILE, PLAN_FILE, LOAD_FILE, TRANSCRIPT_FILE, SCORES_FILE, JUDGEMENTS_FILE, STAGES_FILE,
                  SUMMARY_FILE, STATUS_FILE, TRACKING_FILE, SOURCE_FILE, CONVERSATION_FILE)
RUN_MARKERS = (STATUS_FILE, TRANSCRIPT_FILE, ".hydra/hydra.yaml")  # a folder with one of these holds a run
SWEEP_MARKERS = (MULTIRUN_FILE, SWEEP_FILE)  # a folder with one of these holds a sweep


def run_files(run_dir: Path) -> list[tuple[Path, Optional[str]]]:
    """The files of the run in `run_dir` (path, artifact subfolder or None), in a stable order."""
    files: list[tuple[Path, Optional[str]]] = [(run_dir / name, None) for name in RUN_FILE_NAMES]
    files += [(path, None) for path in sorted(run_dir.glob("*.log"))]
    files += [(run_dir / HYDRA_FOLDER / name, HYDRA_FOLDER) for name in HYDRA_FILES]
    return [(path, subfolder) for path, subfolder in files if path.is_file()]


def run_folder_problem(folder: Path) -> Optional[str]:
    """Why `folder` is not one of this pipeline's run folders, in words; None when it is.

    Every command that reads a run folder (a resume, a re-scoring's source, the report, sync) asks
    this first, so that a dataset's folder, a copy of a transcript or any other folder is refused in
    one line rather than read as a run. Ours: its status.json holds a state a run writes
    (pipeline.run.status); or, without one, Hydra's record of the run (.hydra/hydra.yaml) and no
    records yet (a run stopped while it was being set up), or a chat's conversation.json."""
    if folder.is_file():
        return f"{folder} is a file, expected a run folder"
    if not folder.is_dir():
        return f"no such folder ({folder.absolute()})"
    if holds_sweep(folder):
        return f"{folder} is a sweep folder, not a run folder: give one of its jobs' folders ({folder / '0'}, ...)"
    status_file = folder / STATUS_FILE
    if status_file.is_file():
        try:
            state = json.loads(status_file.read_bytes()).get("state")
        except (ValueError, AttributeError):  # not JSON, not UTF-8, not an object
            state = None
        if state in STATES:
            return None
        return (f"{status_file} is not a status this pipeline writes (a JSON object with a state among "
                f"{', '.join(STATES)}), so {folder} is not one of its run folders")
    if (folder / CONVERSATION_FILE).is_file() or ((folder / HYDRA_FOLDER / "hydra.yaml").is_file()
                                                  and not (folder / TRANSCRIPT_FILE).exists()):
        return None
    return (f"{folder} is not a run folder of this pipeline (it has no {STATUS_FILE}); give the folder a run "
            "printed as its `run dir` (runs/<date>/<time>_<token>, or a sweep's job folder)")


def holds_run(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in RUN_MARKERS)


def holds_sweep(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in SWEEP_MARKERS)


def shown(key: str, value: object) -> str:
    """`key=value` as the user would type it; an empty value shows as ''."""
    return f"{key}={value}" if str(value or "") else f"{key}=''"


def folder_problem(value: object, key: str, sweep: bool, resuming: bool) -> Optional[str]:
    """Why the run (or sweep) folder `value`, set by `key`, must not be used; None when it may.

    New or empty: yes. The launch folder or one above it: never (the run would write its files
    among the project's, and upload them). Holding one of our runs (sweeps): only to resume it.
    Holding anything else: never, so nothing of it is overwritten."""
    text = "" if value is None else str(value)
    what = "sweep" if sweep else "run"
    cwd = Path.cwd().resolve()
    folder = (cwd / text).resolve()
    if folder == cwd or folder in cwd.parents:
        where = "the folder you launched from" if folder == cwd else "a folder above the one you launched from"
        empty = " (an empty value, as from an unset $VARIABLE, means the launch folder)" if not text else ""
        return (f"{shown(key, text)}: the {what} folder would be {where} ({folder}){empty}, so the {what}'s files "
                f"would be written among yours; give the {what} a folder of its own ({key}=runs/my_{what}), or "
                f"leave {key} unset")
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    ours = holds_sweep(folder) if sweep else holds_run(folder)
    if ours and resuming:
        return None
    if ours:
        return (f"{shown(key, text)}: that folder already holds a {what}: continue it with python -m pipeline "
                f"resume={folder}, or choose another folder")
    names = sorted(path.name for path in folder.iterdir())
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{shown(key, text)}: that folder holds other files ({listed}) and not a {what} of this pipeline; "
            f"a {what} needs a new or empty folder, so that nothing in it is overwritten: choose another one")
