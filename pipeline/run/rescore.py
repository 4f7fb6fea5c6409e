"""Re-scoring: `pipeline.from_transcript=<run dir>` summarizes an earlier run's transcript again.

No model is resolved, loaded or run. The earlier (source) run folder is only read; the results go
to this run's own folder, which Hydra created as for any run:
- config.json: the source's config, with this run's dataset.scorer, tracking and
  pipeline.from_transcript (so `python -m pipeline.report --diff <source> <this>` shows the change);
- plan.json: the source's (the generation it describes is the source's);
- transcript.jsonl: the source's records, each answer scored again;
- source.json: the source folder, its MLflow run id (when found in this store), both scorers and
  how many scores changed;
- summary.json, status.json, run.log as usual; speed and peak memory come from the source's
  records and summary (they describe its generation), stage seconds are the source's plus this
  summarize.
The scorer is the source's unless `dataset.scorer.*` is set on the command line, key by key; any
other setting that would change the generation is refused. The MLflow run (named `rescore
<source>`) is tagged source_run_dir and source_run_id.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Optional

import jsonlines

from pipeline.core.config import Config, ScorerConfig, flatten
from pipeline.core.errors import UserError
from pipeline.core.files import read_json, write_json
from pipeline.core.folder_names import CONFIG_FILE, PLAN_FILE, SOURCE_FILE, STATUS_FILE, SUMMARY_FILE, TRANSCRIPT_FILE
from pipeline.core.redact import redact
from pipeline.core.transcript import read_transcript
from pipeline.run.runner import RunResult, close_run, set_status
from pipeline.scoring.scorers import Scorer, check_scorer
from pipeline.stages.summarize import summarize
from pipeline.tracking.runs import PLAN_PARAMS, Tracker, run_tags

log = logging.getLogger(__name__)
# settings that may be given with pipeline.from_transcript: none of them changes the transcript
APPLICABLE = ("dataset.scorer", "tracking", "pipeline.", "hydra.")


def rescore(config: Config, run_dir: Path, overrides: tuple[str, ...] = (), parent_run_id: Optional[str] = None,
            run_name: Optional[str] = None) -> RunResult:
    """Re-score the source run's transcript into `run_dir`. Raises UserError for mistakes, before writing."""
    source = source_folder(config.pipeline.from_transcript)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not key.startswith(APPLICABLE):
            raise UserError(f"{override}: pipeline.from_transcript re-scores an existing transcript, which this "
                            "setting cannot change; only dataset.scorer.*, tracking.* and pipeline.* apply")
    source_config = read_json(source / CONFIG_FILE) if (source / CONFIG_FILE).is_file() else config.to_dict()
    scorer_config = merged_scorer(source_config, config.dataset.scorer, overrides)
    records = read_transcript(source / TRANSCRIPT_FILE)
    scorer = check_scorer(scorer_config, [(r.get("sample_id", "?"), r.get("reference")) for r in records
                                          if r.get("kind", "answer") == "answer"])
    new_config = {**source_config, "dataset": {**source_config.get("dataset", {}),
                                               "scorer": dataclasses.asdict(scorer_config)},
                  "tracking": dataclasses.asdict(config.tracking),
                  "pipeline": {**source_config.get("pipeline", {}), "from_transcript": str(source)}}
    source_summary = read_json(source / SUMMARY_FILE) if (source / SUMMARY_FILE).is_file() else {}
    plan = read_json(source / PLAN_FILE) if (source / PLAN_FILE).is_file() else {}
    state = read_json(source / STATUS_FILE).get("state") if (source / STATUS_FILE).is_file() else None
    if state != "success":
        log.warning("the source run's state is %s: its transcript may hold only part of the dataset", state)

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, redact(new_config))
    set_status(run_dir, "started")
    if plan:
        write_json(run_dir / PLAN_FILE, plan)
    result = RunResult(run_dir)
    tracker = Tracker(config.tracking)
    try:
        source_run_id = find_run_id(tracker, source)
        tracker.start(run_name=run_name or f"rescore {source.name}", parent_run_id=parent_run_id,
                      tags=_tags(config, run_dir, source, source_run_id, records, plan, overrides))
        result.tracker = tracker
        tracker.log_params(_params(new_config, plan))
        started = time.perf_counter()
        rescored = [rescore_record(record, scorer) for record in records]
        with jsonlines.open(run_dir / TRANSCRIPT_FILE, "w", compact=True) as writer:
            writer.write_all(rescored)
        changed = sum(a.get("score") != b.get("score") for a, b in zip(records, rescored))
        seconds = {k: v for k, v in source_summary.get("stage_seconds", {}).items() if k != "summarize"}
        result.summary = summarize(rescored, seconds, scorer.label,
                                   (source_summary.get("peak_memory_bytes"), source_summary.get("peak_memory_kind", "")))
        result.summary.stage_seconds["summarize"] = time.perf_counter() - started
        write_json(run_dir / SOURCE_FILE, {
            "run_dir": str(source), "mlflow_run_id": source_run_id, "scorer_before": _scorer_label(source_config),
            "scorer_after": scorer.label, "scores_changed": changed})
        write_json(run_dir / SUMMARY_FILE, result.summary.to_dict())
        tracker.log_metrics({**result.summary.metrics(), "scores_changed": float(changed)})
        log.info("re-scored %d records of %s with %s: %d scores changed", len(records), source, scorer.label, changed)
    except KeyboardInterrupt:
        close_run(run_dir, tracker, "interrupted", "KILLED", "interrupted by the user")
        raise
    except Exception as error:
        close_run(run_dir, tracker, "failed", "FAILED",
                  str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
        raise
    close_run(run_dir, tracker, "success", "FINISHED", "")
    return result


def source_folder(value: Optional[str]) -> Path:
    """The source run folder, absolute; a UserError when it is not a folder with a transcript."""
    folder = Path(str(value)).expanduser().resolve()
    if folder.is_file():  # a transcript.jsonl given for its folder, say
        raise UserError(f"pipeline.from_transcript={value}: {folder} is a file, expected a run folder "
                        f"(the folder that holds {TRANSCRIPT_FILE})")
    if not folder.is_dir():
        raise UserError(f"pipeline.from_transcript={value}: no such folder")
    if not (folder / TRANSCRIPT_FILE).is_file():
        raise UserError(f"pipeline.from_transcript={value}: the folder has no {TRANSCRIPT_FILE}; give a run folder "
                        "whose execute stage ran (runs/<date>/<time>_<token> or a sweep's job folder)")
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


def rescore_record(record: dict[str, Any], scorer: Scorer) -> dict[str, Any]:
    """The record with its answer scored again; tool steps and answers that could not be completed stay as they were."""
    if record.get("kind", "answer") != "answer" or record.get("status", "ok") != "ok":
        return record
    return {**record, "score": scorer(record["response"], record.get("reference"))}


def _scorer_label(config: dict[str, Any]) -> str:
    """A saved config's scorer as summaries name it (exact_match for folders from before scorers were chosen)."""
    scorer = config.get("dataset", {}).get("scorer") or {}
    return scorer.get("_target_") or scorer.get("name") or "exact_match"


def _tags(config: Config, run_dir: Path, source: Path, source_run_id: Optional[str], records: list[dict[str, Any]],
          plan: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, str]:
    tags = run_tags(config, run_dir, {
        "run_type": "rescore", "source_run_dir": str(source), "source_run_id": source_run_id or "",
        "overrides": " ".join(overrides), "device": plan.get("device", ""),
        "weights_digest": plan.get("model", {}).get("weights_digest", "")})
    if records:
        tags["config_hash"] = records[0].get("config_hash", "")  # the generation's, which is the source's
    return tags


def find_run_id(tracker: Tracker, source: Path) -> Optional[str]:
    """The source run's MLflow run id, looked up by its run_dir tag in this store and experiment."""
    if not tracker.enabled or "'" in str(source):
        return None
    tracker.connect()
    runs = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.run_dir = '{source}'",
                                      max_results=1)
    return runs[0].info.run_id if runs else None


def _params(new_config: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    params = flatten(new_config)
    params.update({f"plan.{key}": plan[key] for key in PLAN_PARAMS if key in plan})
    params.update({f"effective.generation.{k}": v for k, v in plan.get("generation", {}).items()})
    return params
