"""Resuming a run or a sweep: `python -m pipeline resume=<run folder>` or `resume=last`.

Before Hydra starts, `expand_command_line` turns `resume=<folder>` into the command line the run
was started with (its `.hydra/hydra.yaml`, or a sweep's `multirun.yaml`), plus any settings
given now, pointed at the same folder; `check_output_folder` then refuses, before anything is
written, a folder in use or settings that would change what the model writes (with the keys that
differ, or input files (dataset, model weights, ...) whose content is not what the run read
(pipeline.run.inputs). A resume runs in the folder the run was launched from (`enter_launch_folder`),
so relative paths in its config mean what they meant then, from whatever folder it is resumed.
Inside the run, `begin` decides what is left, writing nothing: a folder that already holds a run
is refused unless resuming; a resumed run keeps every complete answer (an answer with tool steps
is complete only once its `answer` record is there; the steps of an unfinished one are dropped by
`settle`, once the resume is accepted, to be generated again) and hands execute the keys to
skip: (sample id, sample index), where a conversation's turn is `<id>#<turn>`. A run whose
execute stage had finished (`executed`: its score stage began, or it ended with success after
`pipeline.until=execute`) resumes at the score stage: no model is resolved or loaded, and its
input files are not read again. A run that ended with success is complete unless the resume asks
for a later stage than it ran to (`pipeline.until=summarize` after `pipeline.until=execute`). A
resume that is refused, for whatever reason, leaves the run folder and its MLflow run as they were.

This module does not generate anything, and does not talk to MLflow (pipeline.tracking.guard
continues the run's MLflow run).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import STAGES, Config, flatten, to_config
from pipeline.core.config_search import initialize_configs
from pipeline.core.errors import UserError
from pipeline.core.files import read_json
from pipeline.core.folder_names import (
    CONFIG_FILE,
    HYDRA_FOLDER,
    MULTIRUN_FILE,
    SCORES_FILE,
    SWEEP_SUMMARY_FILE,
    TRANSCRIPT_FILE,
)
from pipeline.core.records import ResolvedModel, Sample
from pipeline.core.redact import MASK, redact, redact_overrides
from pipeline.core.transcript import rewrite_transcript, scan
from pipeline.run.files import folder_problem, run_folder_problem, shown
from pipeline.run.inputs import MEDIA, differences, fingerprint, read_inputs
from pipeline.run.status import in_use_message, is_locked, planned, read_status

log = logging.getLogger(__name__)
HASHED_SECTIONS = ("runtime", "generation", "session", "dataset")  # what Config.config_hash covers
RUNS_DIR = Path("runs")
# Hydra writes its record of the command (.hydra/) into the run folder each time a job starts there; a resume
# keeps the record of the command that made the run, and writes one only for a sweep's job that never started
# (write_record)
KEEP_RECORD = "hydra.output_subdir=null"


@dataclass
class Previous:
    """What a run folder already holds for the run about to start in it."""

    done: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # final answers by (record id, index)
    next_batch: int = 0  # batch numbers go on from where the transcript stopped
    complete: bool = False  # the run had already ended with success: nothing to do
    kept: list[dict[str, Any]] = field(default_factory=list)  # the transcript's records to keep, in order
    dropped: int = 0  # tool steps of unfinished answers, taken out of the transcript by `settle`
    executed: bool = False  # the execute stage had finished: the run goes on at the score stage


def expand_command_line(argv: list[str]) -> list[str]:
    """`resume=<folder>|last` -> the folder's own command line, then the settings given now; else argv."""
    given = [arg for arg in argv if arg.startswith("resume=")]
    if not given:
        return argv
    if len(given) > 1:
        raise UserError(f"resume= is given {len(given)} times: give one run folder (or resume=last)")
    value = given[0].split("=", 1)[1]
    folder = find_last() if value == "last" else Path(value).expanduser()
    if not folder.is_dir():
        raise UserError(f"resume={value}: no such run folder ({folder.resolve()}); give a folder under runs/ "
                        "(the `run dir` a run printed), or resume=last")
    folder = folder.resolve()
    flags, now = _split_flags([arg for arg in argv if not arg.startswith("resume=")])
    problem = None if (folder / MULTIRUN_FILE).is_file() else run_folder_problem(folder)
    if problem:
        raise UserError(f"resume={value}: {problem}")
    if (folder / MULTIRUN_FILE).is_file():
        flags = (["-m"] if not {"-m", "--multirun"} & set(flags) else []) + flags
        flags += _saved_flags(folder / MULTIRUN_FILE, flags)
        return (flags + _merge(_saved(folder / MULTIRUN_FILE), now)
                + [f"hydra.sweep.dir={folder}", KEEP_RECORD, f"resume={folder}"])
    if (folder / HYDRA_FOLDER / "hydra.yaml").is_file():
        flags += _saved_flags(folder / HYDRA_FOLDER / "hydra.yaml", flags)
        return (flags + _merge(_saved(folder / HYDRA_FOLDER / "hydra.yaml"), now)
                + [f"hydra.run.dir={folder}", KEEP_RECORD, f"resume={folder}"])
    raise UserError(f"resume={value}: {folder} is not a run folder (no .hydra/hydra.yaml) nor a sweep folder "
                    "(no multirun.yaml)")


def _saved(hydra_file: Path) -> list[str]:
    """The command line a run or sweep was started with: Hydra's own settings (a launcher), then the task's."""
    overrides = OmegaConf.load(hydra_file).hydra.overrides
    own = [o for o in overrides.hydra
           if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode=", "hydra.output_subdir="))]
    return own + list(overrides.task)


_VALUED_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-c", "--cfg", "-p",
                 "--package")


def _split_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with their values), and the overrides: the expanded command line puts the flags
    first, as Hydra's parser takes the overrides only as one run of words."""
    flags, overrides = [], []
    words = iter(argv)
    for word in words:
        if not word.startswith("-"):
            overrides.append(word)
            continue
        flags.append(word)
        if word in _VALUED_FLAGS:
            value = next(words, None)
            flags += [] if value is None else [value]
    return flags, overrides


def _saved_flags(hydra_file: Path, flags: list[str]) -> list[str]:
    """`--config-dir=<folder>` and `--config-name=<name>` when the run was started with them (Hydra
    records them among its config sources and as the job's config name) and they are not given now:
    a user's own configs are found again."""
    given = lambda short, long: any(arg in (short, long) or arg.startswith((f"{short}=", f"{long}="))  # noqa: E731
                                    for arg in flags)
    hydra = OmegaConf.load(hydra_file).hydra
    saved = []
    if not given("-cd", "--config-dir"):
        sources = OmegaConf.select(hydra, "runtime.config_sources") or []
        saved += [f"--config-dir={source.path}" for source in sources if source.get("provider") == "command-line"][:1]
    name = OmegaConf.select(hydra, "job.config_name")
    if name and name != "config" and not given("-cn", "--config-name"):
        saved.append(f"--config-name={name}")
    return saved


def _merge(saved: list[str], now: list[str]) -> list[str]:
    """The saved overrides with those given now put over them (by key); resume= itself is not kept."""
    key = lambda override: override.split("=", 1)[0].lstrip("+~")  # noqa: E731
    replaced = {key(o) for o in now if "=" in o}
    kept = [o for o in saved if not o.startswith("resume=") and key(o) not in replaced]
    masked = [key(o) for o in kept if MASK in o and redact_overrides(o.replace(MASK, "x")) != o.replace(MASK, "x")]
    if masked:  # the run folder keeps no secret (pipeline.core.redact): replaying the mask would use "***" as one
        where = " (or keep the user and password in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)" \
            if masked[0] == "tracking.uri" else ""
        raise UserError(f"{masked[0]} held a secret when the run started, and the run folder keeps no secrets: "
                        f"give it again with the resume: {masked[0]}=...{where}")
    return kept + now


def find_last(runs: Path = RUNS_DIR) -> Path:
    """The newest run or sweep folder under runs/ that has something left to do (by the date and time in
    its name, then by age); when every one has completed, the newest (whose resume says so). Runs that were
    only planned (pipeline.until=plan), sweeps of them, and folders that are not our runs are passed over."""
    candidates = [p.parent.parent for p in runs.glob("*/*/.hydra/hydra.yaml") if p.parts[-4] != "multirun"]
    candidates = [p for p in candidates if run_folder_problem(p) is None and not planned(p)]
    sweeps = [p.parent for p in runs.glob("multirun/*/*/multirun.yaml")]
    candidates += [p for p in sweeps if not (_jobs(p) and all(planned(job) for job in _jobs(p)))]
    if not candidates:
        raise UserError(f"resume=last: there is no run under {runs.resolve()}; start one with python -m pipeline, "
                        "or give the folder: resume=<run folder>")
    newest_first = sorted(candidates, key=lambda p: (p.parent.name, p.name.split("_")[0], p.stat().st_mtime),
                          reverse=True)
    return next((folder for folder in newest_first if _unfinished(folder)), newest_first[0])


def _unfinished(folder: Path) -> bool:
    """Whether resuming `folder` would do anything: a run not ended with success, or a sweep with such a job
    (or one that never reached its end, where jobs may not have started yet)."""
    if not (folder / MULTIRUN_FILE).is_file():
        return read_status(folder).get("state") not in ("success", "planned")
    return not (folder / SWEEP_SUMMARY_FILE).is_file() or any(_unfinished(job) for job in _jobs(folder))


def _jobs(sweep: Path) -> list[Path]:
    return [p.parent.parent for p in sweep.glob("*/.hydra/hydra.yaml")]


def write_record(run_dir: Path, task: DictConfig) -> None:
    """Hydra's record of a job (.hydra/config.yaml, hydra.yaml, overrides.yaml), as Hydra writes it, for a job of a
    resumed sweep that had not started before (KEEP_RECORD kept Hydra from writing it): without one the job
    folder could not be found or resumed later. A folder that has one is left alone."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    record = run_dir / HYDRA_FOLDER
    if (record / "hydra.yaml").is_file():
        return
    hydra = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg, resolve=False))
    with read_write(hydra), open_dict(hydra):
        hydra.hydra.output_subdir = HYDRA_FOLDER  # as a job started by the sweep itself records it
    record.mkdir(parents=True, exist_ok=True)
    for name, value in (("config.yaml", task), ("hydra.yaml", hydra), ("overrides.yaml", hydra.hydra.overrides.task)):
        (record / name).write_text(OmegaConf.to_yaml(value), encoding="utf-8")


def enter_launch_folder(argv: list[str]) -> None:
    """For a resume (an expanded command line ending in resume=<folder>), change to the folder the run was
    launched from, so its relative paths (dataset.path, a model folder, runs/mlflow.db, ...) are the
    files it used; a launch folder that no longer exists leaves the current folder (the inputs check
    then says whether the files found here are the run's)."""
    given = [arg.split("=", 1)[1] for arg in argv if arg.startswith("resume=")]
    if not given:
        return
    folder = Path(given[-1])
    saved = folder / MULTIRUN_FILE if (folder / MULTIRUN_FILE).is_file() else folder / HYDRA_FOLDER / "hydra.yaml"
    launched = OmegaConf.select(OmegaConf.load(saved), "hydra.runtime.cwd") if saved.is_file() else None
    if launched and Path(launched).is_dir():
        os.chdir(launched)


def check_output_folder(argv: list[str], composed: Optional[DictConfig] = None) -> Optional[str]:
    """Before Hydra writes anything: None, or why the run's folder must not be written.

    A folder that is not the run's (sweep's) own: the launch folder or one above it, a folder
    holding anything else, an existing run (sweep) unless resuming it (pipeline.run.files); a
    sweep whose jobs would all write into the sweep folder; a folder that cannot be created (a
    file in the way, no permission); a resumed folder in use, or settings that would change what
    the model writes. A sweep's jobs check their own folders (`begin`). `composed` is the config the command line's (first) job composes to, when the
    caller has it (pipeline.cli.precheck): then it is not composed again."""
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion:
        return None
    if composed is None:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
        single = [raw for override, raw in zip(parsed, args.overrides) if not override.is_sweep_override()]
        with initialize_configs(args.config_dir):
            composed = compose(config_name=args.config_name or "config", overrides=single, return_hydra_config=True)
    sweep = args.multirun or str(composed.hydra.mode) == "RunMode.MULTIRUN"
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    value = composed.hydra.sweep.dir if sweep else composed.hydra.run.dir
    resuming = composed.get("resume") is not None
    problem = folder_problem(value, key, sweep, resuming) or _unwritable(Path(str(value or "")), key)
    if problem or sweep:
        return problem or (_job_folder_problem(composed) if sweep else None)
    folder = Path(str(value))
    config = to_config(composed)
    if config.resume is None and config.pipeline.from_transcript:
        from pipeline.run.rescore import source_folder  # it imports this module

        try:
            source_folder(config.pipeline.from_transcript)  # one of our runs, with our records: else nothing starts
        except UserError as error:
            return str(error)
    if config.resume is None:
        return None
    if is_locked(folder):
        return in_use_message(folder)
    try:
        records, _ = scan(folder / TRANSCRIPT_FILE)  # corruption is reported before anything is written
    except UserError as error:
        return str(error)
    if config.pipeline.from_transcript:  # its config is its source's: pipeline.run.rescore checks it
        return None
    return config_difference(folder, config) or records_difference(folder, config, records) \
        or (None if executed(folder, records) else _inputs_problem(folder, config))  # none is read again


def records_difference(folder: Path, config: Config, records: list[dict[str, Any]]) -> Optional[str]:
    """Why the transcript's records cannot be continued under `config`: records made under another config hash."""
    hashes = {r.get("config_hash") for r in records} - {config.config_hash()}
    if not hashes:
        return None
    return (f"{folder / TRANSCRIPT_FILE} holds records of another config (config_hash {', '.join(sorted(hashes))}, "
            f"not {config.config_hash()}): start a new run rather than resuming this one")


def _inputs_problem(folder: Path, config: Config) -> Optional[str]:
    """inputs_difference, for the command-line check, which has no resolved model yet. A run with image or
    audio parts has its samples read (a URL fetched unless cached, as the plan would) to compare their content."""
    recorded = read_inputs(folder)
    if recorded is None:
        return None
    from pipeline.stages.resolve import resolve  # reads the model folder's files, loads nothing

    try:
        model = resolve(config.runtime, config.backend)
        samples = _samples(config) if MEDIA in recorded else None
    except UserError as error:
        return f"resume={folder}: {error}"
    return inputs_difference(folder, config, model, samples)


def _samples(config: Config) -> list[Sample]:
    from pipeline.backends.media_fetch import fetcher
    from pipeline.data.dataset import load_samples

    return load_samples(config.dataset, config.runtime.allow_download, fetcher(config))


def inputs_difference(folder: Path, config: Config, model: ResolvedModel,
                      samples: Optional[list[Sample]] = None) -> Optional[str]:
    """Why the run in `folder` cannot go on with these input files, naming each that changed; None if it can.
    Without `samples` (the command-line check, before the plan reads them) image and audio parts are not compared."""
    recorded = read_inputs(folder)
    if recorded and samples is None:
        recorded = {key: value for key, value in recorded.items() if key != MEDIA}
    changed = differences(recorded, fingerprint(config, model, samples)) if recorded else []
    if not changed:
        return None
    return (f"resume={folder}: the input files differ from the run's, so its records would not match: "
            + "; ".join(changed) + ". Restore them, or start a new run")


def _job_folder_problem(composed: DictConfig) -> Optional[str]:
    """A sweep whose job folders would be the sweep folder itself (an empty hydra.sweep.subdir):
    every job would write over the one before."""
    try:
        subdir = str(OmegaConf.select(composed, "hydra.sweep.subdir", default="") or "")
    except Exception:  # noqa: BLE001 - it names the job (${hydra.job.num}), known only when each job starts
        return None
    if Path(subdir) != Path("."):
        return None
    return (f"{shown('hydra.sweep.subdir', subdir)}: each job's folder would be the sweep folder itself, so the "
            "jobs would write over each other; leave hydra.sweep.subdir unset (the job number) or give each job "
            "its own, e.g. 'hydra.sweep.subdir=job_${hydra.job.num}'")


def _unwritable(folder: Path, key: str) -> Optional[str]:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{key}={folder}: cannot create the run folder: {existing} is a file; choose another folder ({key}=...)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"{key}={folder}: cannot write in {existing} (permission denied); choose another folder ({key}=...) "
                "or make it writable")
    return None


def config_difference(folder: Path, config: Config) -> Optional[str]:
    """Why `config` cannot continue the run in `folder`, naming each setting that differs; None if it can."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None  # stopped before it wrote its config: nothing to compare, nothing generated
    stored = read_json(path)
    current = json.loads(json.dumps(redact(config.to_dict()), default=str))  # as config.json holds it
    differences = []
    for section in HASHED_SECTIONS:
        old, new = flatten(stored.get(section) or {}, f"{section}."), flatten(current.get(section) or {}, f"{section}.")
        for key in sorted(set(old) | set(new)):
            if old.get(key, "<unset>") != new.get(key, "<unset>"):
                differences.append(f"{key}: {old.get(key, '<unset>')!r} in the run, {new.get(key, '<unset>')!r} now")
    if not differences:
        return None
    return (f"resume={folder}: the settings differ from the run's, so its records would not match: "
            + "; ".join(differences) + ". Resume with the run's settings, or start a new run")


def begin(run_dir: Path, config: Config) -> Previous:
    """What is left to do in `run_dir`; refuses a folder that already holds a run unless resuming it.

    Writes nothing: a resume can still be refused after this (its input files are compared once the
    model is resolved); `settle` then puts the transcript in the shape `Previous` describes."""
    status = read_status(run_dir)
    transcript = run_dir / TRANSCRIPT_FILE
    if config.resume is None:
        if status or transcript.exists():
            raise UserError(f"{run_dir} already holds a run ({status.get('state', 'a transcript')}): continue it "
                            f"with python -m pipeline resume={run_dir}, or choose another folder (hydra.run.dir=...)")
        return Previous()
    if status.get("state") in ("success", "planned") and \
            STAGES.index(config.pipeline.until) <= STAGES.index(ran_until(run_dir)):
        return Previous(complete=True)  # a planned run asked for no more than its plan: nothing to do either
    problem = config_difference(run_dir, config)
    if problem:
        raise UserError(problem)
    records, _ = scan(transcript)
    problem = records_difference(run_dir, config, records)
    if problem:
        raise UserError(problem)
    answered = {_key(r) for r in records if r.get("kind", "answer") == "answer"}
    kept = [r for r in records if _key(r) in answered]
    return Previous(done={_key(r): r for r in kept if r.get("kind", "answer") == "answer"},
                    next_batch=max((r.get("batch", -1) for r in kept), default=-1) + 1,
                    kept=kept, dropped=len(records) - len(kept), executed=executed(run_dir, records))


def executed(folder: Path, records: Optional[list[dict[str, Any]]] = None) -> bool:
    """Whether the run in `folder` finished its execute stage: its score stage began (the journal is
    there, created once execute had finished, and every answer it scored is in the transcript), or
    it ended with success at or after execute. `records`: the transcript's, when already read."""
    if (folder / SCORES_FILE).is_file():
        answers = {_key(r) for r in (scan(folder / TRANSCRIPT_FILE)[0] if records is None else records)
                   if r.get("kind", "answer") == "answer"}
        return {_key(entry) for entry in scan(folder / SCORES_FILE)[0]} <= answers
    return read_status(folder).get("state") == "success" and \
        STAGES.index(ran_until(folder)) >= STAGES.index("execute")


def ran_until(folder: Path) -> str:
    """The pipeline.until of the run's last start (config.json; summarize for folders from before it was kept)."""
    path = folder / CONFIG_FILE
    until = (read_json(path).get("pipeline") or {}).get("until") if path.is_file() else None
    return until if until in STAGES else "summarize"


def settle(run_dir: Path, previous: Previous) -> None:
    """Once a resume is accepted: drop the tool steps of unfinished answers (generated again), and say what is kept."""
    transcript = run_dir / TRANSCRIPT_FILE
    if previous.dropped:
        log.info("resume: dropping %d tool step(s) of answers left unfinished", previous.dropped)
        rewrite_transcript(transcript, previous.kept)
    log.info("resume: %d answer(s) already in %s; generating the rest", len(previous.done), transcript)


def _key(record: dict[str, Any]) -> tuple[str, int]:
    return record["sample_id"], record.get("sample_index", 0)
