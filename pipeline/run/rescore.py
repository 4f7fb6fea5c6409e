"""Re-scoring: `pipeline.from_transcript=<run dir>` is a new run that starts at the score stage.

No model is resolved, loaded or run: the runner (pipeline.run.runner) takes this run straight to
score -> summarize over the source run's answers. The source run folder is only read; this module
seeds the new run's own folder (Hydra created it as for any run) before the score stage:
- config.json: the source's config, with this run's dataset.scorer, scoring (a judge: pipeline.stages.judge),
  tracking and pipeline (from_transcript, until), so `python -m pipeline.report --diff <source> <this>` shows the change;
- plan.json: the source's (the generation it describes is the source's);
- transcript.jsonl: the source's records, their scores and judgements cleared (the score stage scores them
  again, and a judge, if this run has one, judges them again);
- source.json (once scored): the source folder, its MLflow run id (when found in this store), both
  scorers and how many scores changed.
Speed and peak memory come from the source's records and summary (they describe its generation);
stage seconds are the source's plus this run's score and summarize. The scorer is the source's
unless `dataset.scorer.*` is set on the command line, key by key; any other setting that would
change the generation is refused, before anything is written. The MLflow run (named `rescore
<source>`) is tagged run_type=rescore, source_run_dir and source_run_id. Like any run it can be
resumed (`resume=<its folder>`): the answers the score stage's journal holds are not scored again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Optional

from pipeline.core.config import STAGES, Config, ScorerConfig, flatten
from pipeline.core.errors import UserError
from pipeline.core.files import read_json, write_json
from pipeline.core.folder_names import CONFIG_FILE, PLAN_FILE, SOURCE_FILE, SUMMARY_FILE, TRANSCRIPT_FILE
from pipeline.core.redact import redact
from pipeline.core.transcript import read_transcript, rewrite_transcript
from pipeline.run.files import run_folder_problem
from pipeline.run.resume import HASHED_SECTIONS, ran_until
from pipeline.run.status import read_status, set_status
from pipeline.scoring.scorers import check_scorer
from pipeline.stages.score import is_answer
from pipeline.tracking.runs import Tracker, plan_params, run_tags

log = logging.getLogger(__name__)
# settings that may be given with pipeline.from_transcript: none of them changes the transcript
APPLICABLE = ("dataset.scorer", "scoring", "tracking", "pipeline.", "hydra.", "resume")


@dataclasses.dataclass
class Rescore:
    """A re-scoring run, checked: where its answers come from, its scorer and what it starts from."""

    source: Path
    scorer: ScorerConfig
    config: dict[str, Any]  # the run's config.json: the source's, with this run's scorer, tracking and pipeline
    plan: dict[str, Any]
    source_config: dict[str, Any]
    source_summary: dict[str, Any]
    complete: bool = False  # a resume of a re-scoring run that had completed: nothing to do

    @property
    def stage_seconds(self) -> dict[str, float]:
        """The source's stages that made the answers (its own scoring and summary are not this run's)."""
        seconds = self.source_summary.get("stage_seconds", {})
        return {k: v for k, v in seconds.items() if k not in ("score", "judge", "summarize")}

    @property
    def peak_memory(self) -> tuple[Optional[int], str]:
        return self.source_summary.get("peak_memory_bytes"), self.source_summary.get("peak_memory_kind", "")


def prepare(config: Config, run_dir: Path, overrides: tuple[str, ...] = ()) -> Rescore:
    """The re-scoring run `config` asks for, checked; writes nothing. UserError for mistakes."""
    source = source_folder(config.pipeline.from_transcript)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not key.startswith(APPLICABLE):
            raise UserError(f"{override}: pipeline.from_transcript re-scores an existing transcript, which this "
                            "setting cannot change; only dataset.scorer.*, scoring.*, tracking.* and pipeline.* apply")
    source_config = read_json(source / CONFIG_FILE) if (source / CONFIG_FILE).is_file() else config.to_dict()
    scorer_config = merged_scorer(source_config, config.dataset.scorer, overrides)
    records = read_transcript(source / TRANSCRIPT_FILE)
    check_scorer(scorer_config, [(r.get("sample_id", "?"), r.get("reference")) for r in records if is_answer(r)])
    new_config = json.loads(json.dumps(redact({
        **source_config, "dataset": {**source_config.get("dataset", {}), "scorer": dataclasses.asdict(scorer_config)},
        "tracking": dataclasses.asdict(config.tracking), "scoring": dataclasses.asdict(config.scoring),
        "pipeline": {**source_config.get("pipeline", {}), "from_transcript": str(source),
                     "until": config.pipeline.until}}), default=str))
    prepared = Rescore(source, scorer_config, new_config,
                       read_json(source / PLAN_FILE) if (source / PLAN_FILE).is_file() else {}, source_config,
                       read_json(source / SUMMARY_FILE) if (source / SUMMARY_FILE).is_file() else {})
    if config.resume is not None:
        prepared.complete = _resumed(prepared, run_dir, config.pipeline.until)
    state = read_status(source).get("state")
    if state != "success":
        log.warning("the source run's state is %s: its transcript may hold only part of the dataset", state)
    return prepared


def _resumed(prepared: Rescore, run_dir: Path, until: str) -> bool:
    """Whether the re-scoring run in `run_dir` had completed; a UserError when it re-scored something else."""
    if not (run_dir / CONFIG_FILE).is_file():
        return False  # stopped before it wrote anything: it starts again
    stored = read_json(run_dir / CONFIG_FILE)
    keys = [f"{section}." for section in HASHED_SECTIONS] + ["pipeline.from_transcript"]
    old, new = flatten(stored), flatten(prepared.config)
    differ = [key for key in sorted(set(old) | set(new))
              if key.startswith(tuple(keys)) and old.get(key) != new.get(key)]
    if differ:
        raise UserError(f"resume={run_dir}: it re-scored with other settings ({', '.join(differ)}); start a new run "
                        "with pipeline.from_transcript instead")
    return read_status(run_dir).get("state") == "success" and STAGES.index(until) <= STAGES.index(ran_until(run_dir))


def seed(prepared: Rescore, run_dir: Path) -> None:
    """Write the run's config, plan and (unless a resume finds it there) its transcript: the source's answers."""
    write_json(run_dir / CONFIG_FILE, prepared.config)
    set_status(run_dir, "started")
    if prepared.plan:
        write_json(run_dir / PLAN_FILE, prepared.plan)
    if not (run_dir / TRANSCRIPT_FILE).is_file():  # a resume keeps it: the score stage's journal goes with it
        rewrite_transcript(run_dir / TRANSCRIPT_FILE, [
            {**r, "score": None, "extracted": None, **({"judge": None} if "judge" in r else {})} if is_answer(r) else r
            for r in read_transcript(prepared.source / TRANSCRIPT_FILE)])


def start_tracking(prepared: Rescore, config: Config, tracker: Tracker, run_dir: Path, run_name: str,
                   parent_run_id: Optional[str], overrides: tuple[str, ...]) -> Optional[str]:
    """Open the run's MLflow run, tagged with its source; returns the source's MLflow run id (None if not found)."""
    source_run_id = find_run_id(tracker, prepared.source)
    records = read_transcript(run_dir / TRANSCRIPT_FILE)
    tags = run_tags(config, run_dir, {
        "run_type": "rescore", "source_run_dir": str(prepared.source), "source_run_id": source_run_id or "",
        "overrides": " ".join(overrides), "device": prepared.plan.get("device", ""),
        "weights_digest": prepared.plan.get("model", {}).get("weights_digest", "")})
    if records:
        tags["config_hash"] = records[0].get("config_hash", "")  # the generation's, which is the source's
    tracker.start(run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    params = flatten(prepared.config)
    params.update(plan_params(prepared.plan))
    tracker.log_params(params)
    return source_run_id


def record_source(prepared: Rescore, run_dir: Path, source_run_id: Optional[str], scorer_label: str) -> int:
    """source.json, once the answers are scored; returns how many scores differ from the source's."""
    before = {(r["sample_id"], r.get("sample_index", 0)): r.get("score")
              for r in read_transcript(prepared.source / TRANSCRIPT_FILE) if is_answer(r)}
    after = [r for r in read_transcript(run_dir / TRANSCRIPT_FILE) if is_answer(r)]
    changed = sum(before.get((r["sample_id"], r.get("sample_index", 0))) != r.get("score") for r in after)
    write_json(run_dir / SOURCE_FILE, {
        "run_dir": str(prepared.source), "mlflow_run_id": source_run_id,
        "scorer_before": _scorer_label(prepared.source_config), "scorer_after": scorer_label,
        "scores_changed": changed})
    log.info("re-scored %d answers of %s with %s: %d scores changed", len(after), prepared.source, scorer_label,
             changed)
    return changed


def source_folder(value: Optional[str]) -> Path:
    """The source run folder, absolute; a UserError when it is not one of our run folders with a transcript
    (its records are checked too: a dataset put there is not a transcript)."""
    folder = Path(str(value)).expanduser().resolve()
    if folder.is_file():  # a transcript.jsonl given for its folder, say
        raise UserError(f"pipeline.from_transcript={value}: {folder} is a file, expected a run folder "
                        f"(the folder that holds {TRANSCRIPT_FILE})")
    if not folder.is_dir():
        raise UserError(f"pipeline.from_transcript={value}: no such folder")
    problem = run_folder_problem(folder)
    if problem:
        raise UserError(f"pipeline.from_transcript={value}: {problem}")
    if not (folder / TRANSCRIPT_FILE).is_file():
        raise UserError(f"pipeline.from_transcript={value}: the folder has no {TRANSCRIPT_FILE}; give a run folder "
                        "whose execute stage ran (runs/<date>/<time>_<token> or a sweep's job folder)")
    try:
        read_transcript(folder / TRANSCRIPT_FILE)  # TranscriptCorrupt for anything that is not our records
    except UserError as error:
        raise UserError(f"pipeline.from_transcript={value}: {error}") from None
    return folder


def merged_scorer(source_config: dict[str, Any], composed: ScorerConfig, overrides: tuple[str, ...]) -> ScorerConfig:
    """The source's scorer, with the dataset.scorer keys this command line sets taken from `composed`."""
    fields = {f.name for f in dataclasses.fields(ScorerConfig)}
    merged = {k: v for k, v in source_config.get("dataset", {}).get("scorer", {}).items() if k in fields}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "dataset.scorer":
            return composed
        if key.startswith("dataset.scorer."):
            name = key.split(".")[2]
            merged[name] = getattr(composed, name)
    return ScorerConfig(**merged)


def _scorer_label(config: dict[str, Any]) -> str:
    """A saved config's scorer as summaries name it (exact_match for folders from before scorers were chosen)."""
    scorer = config.get("dataset", {}).get("scorer") or {}
    return scorer.get("_target_") or scorer.get("name") or "exact_match"


def find_run_id(tracker: Tracker, source: Path) -> Optional[str]:
    """The source run's MLflow run id, looked up by its run_dir tag in this store and experiment."""
    if not tracker.enabled or "'" in str(source):
        return None
    tracker.connect()
    if tracker.client is None:  # the store could not be reached (a guarded tracker went on without it)
        return None
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.run_dir = '{source}'",
                                      max_results=1)
    return runs[0].info.run_id if runs else None


