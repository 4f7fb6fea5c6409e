"""The runner: calls the six stages in order, times each, and keeps the run folder and MLflow in step.

resolve -> plan -> load -> execute -> score -> summarize, stopping after `pipeline.until`. The run
folder gets config.json, plan.json, transcript.jsonl, scores.jsonl, summary.json and status.json
as each becomes known. The MLflow run is opened once the plan holds (a mistake found while
planning leaves no run in MLflow), and is ended FINISHED, FAILED or KILLED to match status.json.
A run starts at the score stage, with no model, when its answers are all there already
(`_run_from_score`): a resume of a run whose execute stage had finished (pipeline.run.resume),
and a re-scoring run (`pipeline.from_transcript`: another run's answers, seeded by pipeline.run.rescore).
With `scoring=judge` the judge is planned with the run (plan.json's `judge`; over the answers there are, for
a run that starts at the score stage) and grades the answers after the score stage, once the answering
model has been closed (pipeline.stages.judge; its seconds are `stage/judge/seconds`).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from pipeline.backends.base import Backend
from pipeline.backends import registry
from pipeline.core.config import Config
from pipeline.core.console import ProgressSink
from pipeline.core.errors import (
    BackendUnavailable,
    Interrupted,
    TrackingError,
    UserError,
    interruption_behind,
    raise_if_signalled,
    reraise_interruption,
)
from pipeline.core.files import read_json, write_json
from pipeline.core.folder_names import (
    CONFIG_FILE,
    INPUTS_FILE,
    LOAD_FILE,
    PLAN_FILE,
    STAGES_FILE,
    STATUS_FILE,
    SUMMARY_FILE,
    TRANSCRIPT_FILE,
)
from pipeline.core.records import RuntimePlan, Summary
from pipeline.core.redact import redact
from pipeline.core.transcript import TranscriptWriter, read_transcript
from pipeline.run import rescore
from pipeline.run.files import run_files
from pipeline.run.inputs import fingerprint
from pipeline.run.log_file import release_run_log
from pipeline.run.resume import Previous, begin, inputs_difference, settle
from pipeline.run.status import locked, set_status
from pipeline.stages.execute import execute
from pipeline.stages.judge import PlannedJudge, judge, plan_judge, stand_ins
from pipeline.stages.plan import plan
from pipeline.stages.resolve import resolve
from pipeline.stages.score import score
from pipeline.stages.summarize import summarize
from pipeline.tracking.guard import GuardedTracker
from pipeline.tracking.runs import Tracker, config_params, judge_params, model_label, run_name, run_tags

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class RunResult:
    run_dir: Path
    plan: Optional[RuntimePlan] = None
    summary: Optional[Summary] = None
    tracker: Optional[Tracker] = None
    complete: bool = False  # a resume found the run already completed: nothing was done


def run(config: Config, run_dir: Path, parent_run_id: Optional[str] = None,
        overrides: tuple[str, ...] = (), job: Optional[int] = None,
        experiment_id: Optional[str] = None) -> RunResult:
    """Run the pipeline into `run_dir`. Raises UserError for mistakes, anything else for failures.

    `job` is the run's number in a sweep (its MLflow run's name starts with it); `experiment_id` is its
    experiment's, when known (a sweep created it), else it is looked up by name. The folder is locked while
    the run is in it; with `config.resume` the run continues what the folder holds. A resume writes
    nothing until its model and input files are checked (resolve, plan, pipeline.run.inputs): one that is
    refused or stopped before then leaves the folder and its MLflow run as they were."""
    with locked(run_dir):
        return _run(config, run_dir, parent_run_id, overrides, job, experiment_id)


def _run(config: Config, run_dir: Path, parent_run_id: Optional[str], overrides: tuple[str, ...],
         job: Optional[int], experiment_id: Optional[str]) -> RunResult:
    rescoring = rescore.prepare(config, run_dir, overrides) if config.pipeline.from_transcript else None
    previous = Previous(complete=rescoring.complete) if rescoring else begin(run_dir, config)
    result = RunResult(run_dir)
    if previous.complete:
        result.complete, result.summary = True, _read_summary(run_dir)
        return result
    if rescoring or previous.executed:
        return _run_from_score(config, run_dir, parent_run_id, overrides, job, previous, rescoring, experiment_id)
    # until accepted, a resume must leave the run folder as it found it; a folder with no status yet holds nothing to
    # keep (a sweep's job that never started, a run stopped while it was set up): it starts as a new run
    resuming = config.resume is not None and (run_dir / STATUS_FILE).is_file()
    if not resuming:
        _start(run_dir, config)
    seconds: dict[str, float] = {}
    tracker = GuardedTracker(config.tracking, run_dir, resuming=resuming, experiment_id=experiment_id)
    timed = _timer(seconds)

    until = config.pipeline.until
    try:
        tracker.check_reachable()  # a dead tracking server is an error within seconds, before anything loads
        resolved = timed("resolve", resolve, config.runtime, config.backend)
        if until == "resolve":
            print(json.dumps(asdict(resolved), indent=2))
            if not resuming:  # a resume told to stop here only shows what it would use: the run stays as it was
                set_status(run_dir, "planned", "pipeline.until=resolve: nothing was run")
            return result
        result.plan, samples, backend, judging = timed("plan", _plan, config, resolved, run_dir, overrides)
        inputs = fingerprint(config, resolved, samples)
        if resuming:
            problem = inputs_difference(run_dir, config, resolved, samples)
            if problem:
                raise UserError(problem)
            if until == "plan":
                print(json.dumps(result.plan.to_dict(), indent=2))
                return result
            settle(run_dir, previous)
            _start(run_dir, config)
            resuming = False  # accepted: from here on, the run's state is this run's
        if not (run_dir / INPUTS_FILE).is_file():  # a resume keeps what the run first read
            write_json(run_dir / INPUTS_FILE, inputs)
        write_json(run_dir / PLAN_FILE, result.plan.to_dict())
        if until == "plan":
            print(json.dumps(result.plan.to_dict(), indent=2))
            set_status(run_dir, "planned", "pipeline.until=plan: nothing was run")  # not a result (no MLflow run)
            return result

        name = run_name(f"{model_label(vars(resolved))} on {config.dataset.name}", overrides, job)
        tracker.start(run_name=name, parent_run_id=parent_run_id,
                      tags=run_tags(config, run_dir, {
            "weights_digest": resolved.weights_digest or "", "device": result.plan.device, "model.kind": resolved.kind,
            "model.path": resolved.path, "model.commit": resolved.commit or "", "overrides": " ".join(overrides),
            **registry.kind(config.backend.name).run_tags(result.plan)}))
        result.tracker = tracker
        tracker.log_params(config_params(config, result.plan))
        tracker.log_dataset(config.dataset, len(samples))

        kind = registry.kind(config.backend.name)
        timed("load", _load, backend, kind, result.plan.device)  # for a server: connect (it still serves the model)
        loaded = getattr(backend, "load_record", None)  # the in-process model's: loaded, or kept from an earlier job
        if loaded is not None:
            write_json(run_dir / LOAD_FILE, loaded.to_dict())
            tracker.set_tags({"load.reused": str(loaded.reused).lower(), "load.reused_from": loaded.reused_from or ""})
        if until != "load":
            answers = [(s.id, i) for s in samples for i in range(config.generation.num_samples)]
            kept = sum(key in previous.done for key in answers)  # a resume's: not generated again
            progress = ProgressSink(len(answers) - kept, sys.stderr, kept=kept)
            with TranscriptWriter(run_dir / TRANSCRIPT_FILE) as writer:
                try:
                    timed("execute", execute, backend, samples, config, writer, config.config_hash(), progress,
                          previous.done, previous.next_batch)
                finally:
                    progress.close()
                    backend.close()
            write_json(run_dir / STAGES_FILE, seconds)  # what a later start at the score stage cannot time itself
        if until in ("score", "summarize"):
            timed("score", score, run_dir, config.dataset.scorer)
            if judging is not None:  # after the answering model was closed: the judge loads in its place
                timed("judge", judge, run_dir, judging)
        if until == "summarize":
            result.summary = _summarize(run_dir, seconds, config.dataset.scorer.label, kind.peak_memory(result.plan.device),
                                        tracker, timed)
    except (KeyboardInterrupt, Exception) as error:
        if not resuming:  # a resume refused or stopped before it was accepted leaves the run as it was
            close_run(run_dir, tracker, *_ending(interruption_behind(error)), seconds)
        reraise_interruption(error)
        raise
    close_run(run_dir, tracker, "success", "FINISHED", "", seconds)
    return result


def _run_from_score(config: Config, run_dir: Path, parent_run_id: Optional[str], overrides: tuple[str, ...],
                    job: Optional[int], previous: Previous, rescoring: Optional[rescore.Rescore],
                    experiment_id: Optional[str]) -> RunResult:
    """score -> summarize over answers that are all there already: a resumed run's (`previous`, accepted
    by begin: its execute stage had finished), or another run's (`rescoring`). No model is resolved or loaded."""
    result = RunResult(run_dir)
    # the stages that made the answers ran before: their seconds (for tokens per second) are the source's, or
    # what this run's execute left in stages.json
    earlier = rescoring.stage_seconds if rescoring else read_json(run_dir / STAGES_FILE) \
        if (run_dir / STAGES_FILE).is_file() else {}
    seconds: dict[str, float] = {k: v for k, v in earlier.items() if k not in ("score", "judge", "summarize")}
    tracker = GuardedTracker(config.tracking, run_dir, resuming=config.resume is not None, experiment_id=experiment_id)
    timed = _timer(seconds)
    scorer = rescoring.scorer if rescoring else config.dataset.scorer
    # the judge is planned over the answers there are, before anything is written or loaded: a mistake leaves
    # the run as it was
    judging = plan_judge(config, read_transcript((rescoring.source if rescoring else run_dir) / TRANSCRIPT_FILE),
                         run_dir) if config.scoring.judge.enabled else None
    try:
        tracker.check_reachable()
        if rescoring:  # the source run's answers, to be scored again in this folder
            release_run_log()
            rescore.seed(rescoring, run_dir)
            name = run_name(f"rescore {rescoring.source.name}", overrides, job)
            source_run_id = rescore.start_tracking(rescoring, config, tracker, run_dir, name, parent_run_id,
                                                   overrides)
        else:  # nothing to settle: an answer's unfinished tool steps cannot outlive the execute stage
            _start(run_dir, config)
            tracker.start(run_name=run_name(f"{config.runtime.model} on {config.dataset.name}", overrides, job),
                          parent_run_id=parent_run_id,
                          tags=run_tags(config, run_dir, {"overrides": " ".join(overrides)}))
            tracker.log_params(config_params(config))
            log.info("resume: every answer is in %s already: going on at the score stage, no model loaded",
                     run_dir / TRANSCRIPT_FILE)
        # an evaluation run like any other: each trace gets its score and its reference as assessments
        tracker.evaluate_with(scorer.label, rescoring.config["dataset"].get("name", "") if rescoring
                              else config.dataset.name)
        result.tracker = tracker
        if judging is not None:
            _record_judge(run_dir, judging, tracker)
        if config.pipeline.until not in ("score", "summarize"):  # a resume told to stop before scoring
            close_run(run_dir, tracker, "success", "FINISHED", "", seconds)
            return result
        timed("score", score, run_dir, scorer)
        if judging is not None:
            timed("judge", judge, run_dir, judging)
        if rescoring:
            tracker.log_metrics({"scores_changed": float(rescore.record_source(rescoring, run_dir, source_run_id,
                                                                               scorer.label))})
        if config.pipeline.until == "summarize":
            # the answers' generation ran elsewhere (another process, or the source run): its peak memory is the
            # source's when known; this process's would say nothing about it
            result.summary = _summarize(run_dir, seconds, scorer.label,
                                        rescoring.peak_memory if rescoring else (None, ""), tracker, timed)
    except (KeyboardInterrupt, Exception) as error:
        close_run(run_dir, tracker, *_ending(interruption_behind(error)), seconds)
        reraise_interruption(error)
        raise
    close_run(run_dir, tracker, "success", "FINISHED", "", seconds)
    return result


def _plan(config: Config, resolved: Any, run_dir: Path, overrides: tuple[str, ...]) -> tuple[Any, ...]:
    """The plan stage: the answering model's plan, samples and backend, and the judge's (scoring=judge), planned
    over stand-ins for the answers to come; the judge's part goes into the plan (plan.json)."""
    runtime_plan, samples, backend = plan(config, resolved, run_dir, overrides)
    judging = None
    if config.scoring.judge.enabled:
        judging = plan_judge(config, stand_ins(samples, config), run_dir, runtime_plan)
        runtime_plan.judge = judging.to_dict()
    return runtime_plan, samples, backend, judging


def _record_judge(run_dir: Path, judging: PlannedJudge, tracker: Tracker) -> None:
    """A run that starts at the score stage: its judge's plan into plan.json, and who judges into MLflow."""
    planned = read_json(run_dir / PLAN_FILE) if (run_dir / PLAN_FILE).is_file() else {}
    write_json(run_dir / PLAN_FILE, {**planned, "judge": judging.to_dict()})
    tracker.log_params(judge_params(judging.to_dict()))


def _timer(seconds: dict[str, float]) -> Callable[..., Any]:
    """timed(stage, function, *args): the function's value; its seconds go to `seconds` and the log (and to
    MLflow as the run closes, after the scores: see close_run)."""
    def timed(stage: str, function: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        value = function(*args)
        raise_if_signalled()
        seconds[stage] = time.perf_counter() - started
        log.info("%s: %.2f s", stage, seconds[stage])
        return value
    return timed


def _summarize(run_dir: Path, seconds: dict[str, float], scorer: str, peak: tuple[Optional[int], str],
               tracker: Tracker, timed: Callable[..., Any]) -> Summary:
    """The summarize stage over the scored transcript: summary.json and the run's MLflow metrics."""
    records = read_transcript(run_dir / TRANSCRIPT_FILE)
    summary = timed("summarize", summarize, records, seconds, scorer, peak)
    summary.stage_seconds = dict(seconds)  # now including summarize itself
    write_json(run_dir / SUMMARY_FILE, summary.to_dict())
    tracker.log_metrics(summary.metrics())
    return summary


def _start(run_dir: Path, config: Config) -> None:
    release_run_log()  # a resume, accepted: from here on its lines are the run's
    write_json(run_dir / CONFIG_FILE, redact(config.to_dict()))
    set_status(run_dir, "started")


def _ending(error: BaseException) -> tuple[str, str, str]:
    """How a run stopped by `error` ends: its state, its MLflow status and the reason."""
    if isinstance(error, KeyboardInterrupt):
        # an Interrupted may say what sent it (a SLURM job's time limit: hydra_plugins.pipeline_launcher.slurm)
        reason = ((str(error) or "stopped by SIGTERM") if isinstance(error, Interrupted)
                  else "interrupted by the user (Ctrl-C)")
        return "interrupted", "KILLED", reason
    if isinstance(error, (UserError, BackendUnavailable)):
        return "failed", "FAILED", str(error)
    return "failed", "FAILED", f"{type(error).__name__}: {error}"


def _load(backend: Backend, kind: registry.BackendKind, device: str) -> None:
    """The load stage: the backend's model (kept from an earlier job, or loaded), with the device's
    peak memory counted from here (where the kind measures it: the model is in this process)."""
    kind.reset_peak_memory(device)
    backend.load()


def close_run(run_dir: Path, tracker: Tracker, state: str, mlflow_status: str, reason: str,
              stage_seconds: Optional[dict[str, float]] = None) -> None:
    """End the run: status.json, then in MLflow the stage timings (after the summary's scores, so that the run
    views show the scores first), the traces, the artifacts and the run's end."""
    shutil.rmtree(run_dir / "offload", ignore_errors=True)  # disk-offloaded weights: a copy, not a result
    try:
        set_status(run_dir, state, reason)
    except OSError as error:  # not even written in place (see set_status); the message still reaches the user
        log.error("could not write %s: %s", run_dir / STATUS_FILE, error)
    if tracker.run_id:
        try:
            try:
                tracker.log_metrics({f"stage/{stage}/seconds": value for stage, value in (stage_seconds or {}).items()})
                tracker.log_traces(run_dir / TRANSCRIPT_FILE)  # after execute, whatever its outcome: it pays nothing
                for path, subfolder in run_files(run_dir):  # what the run wrote, never whatever else is there
                    tracker.log_artifact(path, subfolder)
            finally:
                tracker.finish(mlflow_status)
        except TrackingError as error:
            if state == "success":  # the results are complete, but not in MLflow: resume finishes the upload
                set_status(run_dir, "failed", str(error))
                raise
            log.error("%s", error)  # the run's own failure is the one to report
        except OSError as error:  # tracking.json on a full disk: the run's own ending is the one to report
            if state == "success":
                raise
            log.error("could not record the MLflow run's end in %s: %s", run_dir, error)


def _read_summary(run_dir: Path) -> Optional[Summary]:
    path = run_dir / SUMMARY_FILE
    return Summary(**read_json(path)) if path.is_file() else None
