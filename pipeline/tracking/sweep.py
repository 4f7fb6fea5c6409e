"""Sweeps: one MLflow parent run per multirun, with every job's run as its child.

A Hydra callback (configured in conf/config.yaml) runs in the launching process. Before any job
starts it creates the MLflow store and experiment (so parallel launchers never race to create
them) and the parent run, named after what it sweeps (`sweep <experiment>: <swept keys>`), and
writes `sweep.json` into the sweep folder; each job reads the parent's id from there, and the
experiment's (jobs on many machines do not look it up by name at once), whatever process or machine
it runs in (the joblib launcher's workers, SLURM jobs). After the last job it
prints a table of the jobs, writes `sweep_summary.json` and the comparison (pipeline.tracking.comparison:
a table and plots of each metric against each swept key, the plots drawn by processes started with
the sweep, pipeline.tracking.plot_process), logs them to the parent and ends the
parent FINISHED, or FAILED when any job failed (and the command then exits 1). A resumed sweep
(`resume=<sweep folder>`) takes up the same parent run; its completed jobs are skipped. A sweep
that stops early (Ctrl-C, SIGTERM, its launcher failing) gets no callback from Hydra: the entry
point ends its parent KILLED or FAILED (end_launched_sweep, from pipeline.run.outside_jobs).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.core.config import TrackingConfig, register, to_config
from pipeline.core.console import sweep_table, ui_hint
from pipeline.core.errors import EXIT_FAILURE
from pipeline.core.files import read_json, write_json
from pipeline.core.folder_names import STATUS_FILE, SUMMARY_FILE, SWEEP_FILE, SWEEP_SUMMARY_FILE
from pipeline.tracking.comparison import write_comparison
from pipeline.tracking.guard import GuardedTracker
from pipeline.tracking.plot_process import PlotProcesses

log = logging.getLogger(__name__)
# The sweep this process launched, from on_multirun_start until its parent run is ended: Hydra calls
# no callback when a sweep ends early (Ctrl-C, SIGTERM, its launcher failing), so the entry point
# ends the parent through this (end_launched_sweep).
_launched: Optional["SweepTracking"] = None


class SweepCallbackError(BaseException):
    """on_multirun_start or on_multirun_end failed (a full disk, an unreachable store). Hydra turns a
    callback's Exception into a warning and goes on (launches the jobs; exits 0 with the parent run
    RUNNING), so the error travels as this instead, to the entry point (pipeline.run.outside_jobs
    reports `error`)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class SweepTracking(Callback):
    def __init__(self) -> None:
        self.tracker: Optional[GuardedTracker] = None
        self.plots: Optional[PlotProcesses] = None
        self.sweep_dir: Optional[Path] = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "plots": None}  # joblib pickles the callbacks for its workers; the processes stay here

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except Exception as error:
            raise SweepCallbackError(error) from error

    def _start(self, config: DictConfig) -> None:
        global _launched
        register()
        sweep_dir = Path(config.hydra.sweep.dir)
        self.sweep_dir = sweep_dir.absolute()
        _launched = self
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.plots = PlotProcesses()  # imports matplotlib while the jobs run
        params = OmegaConf.to_container(config.hydra.sweeper.params) if config.hydra.sweeper.get("params") else {}
        overrides = list(config.hydra.overrides.task)
        swept = swept_keys(overrides, params)
        info: dict[str, Any] = {"sweep_dir": str(sweep_dir), "overrides": overrides, "params": params, "swept": swept}
        settings = to_config(config)
        self.tracker = GuardedTracker(settings.tracking)
        earlier = read_json(sweep_dir / SWEEP_FILE) if (sweep_dir / SWEEP_FILE).is_file() else {}
        if self.tracker.enabled and earlier.get("parent_run_id"):  # a resumed sweep: the same parent run
            self.tracker.reopen(earlier["parent_run_id"])
            info.update(parent_run_id=self.tracker.run_id, experiment_id=self.tracker.experiment_id,
                        experiment=self.tracker.experiment_name)
        elif self.tracker.enabled:
            self.tracker.start(run_name=sweep_name(overrides, swept), tags={
                "sweep_dir": str(sweep_dir), "overrides": " ".join(overrides), "run_type": "sweep",
                "swept": ", ".join(swept)})
            self.tracker.log_params({"sweep.overrides": " ".join(overrides),
                                     **{f"sweep.{key}": value for key, value in params.items()}})
            info.update(parent_run_id=self.tracker.run_id, experiment_id=self.tracker.experiment_id,
                        experiment=self.tracker.experiment_name)
        write_json(sweep_dir / SWEEP_FILE, info)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._end(config)
        except Exception as error:
            raise SweepCallbackError(error) from error

    def _end(self, config: DictConfig) -> None:
        global _launched
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_jobs(sweep_dir)
        results = [job for job in jobs if job["state"] != "planned"]  # pipeline.until=plan ran nothing: no row
        failed = [job for job in results if job["state"] != "success"]
        write_json(sweep_dir / SWEEP_SUMMARY_FILE, {"jobs": jobs, "failed": len(failed)})
        planned = len(jobs) - len(results)
        print(f"\nsweep     {len(jobs)} jobs, {len(failed)} failed{f', {planned} only planned' if planned else ''}, "
              f"in {sweep_dir}")
        comparison = None
        if results:
            print(sweep_table(results))
            try:
                comparison = write_comparison(sweep_dir, results, read_json(sweep_dir / SWEEP_FILE).get("swept", []),
                                              draw=self.plots.write_plots if self.plots else None)
                print(f"compare   {comparison.markdown} (also .csv; {len(comparison.plots)} plots in "
                      f"{comparison.markdown.parent / 'plots'})")
            except Exception as error:  # noqa: BLE001 - the jobs' results stand without it; the parent still ends
                log.warning("sweep comparison not written: %s: %s", type(error).__name__, error)
        if self.tracker and self.tracker.run_id:
            accuracies = [job["accuracy"] for job in jobs if job.get("accuracy") is not None]
            if not results:  # FINISHED as the sweep did, but no evaluation ran: say so where the runs are listed
                self.tracker.set_tags({"planned_only": "true"})
            self.tracker.log_metrics({"jobs": len(jobs), "jobs_failed": len(failed), "jobs_planned": planned,
                                      **({"best_accuracy": max(accuracies)} if accuracies else {})})
            self.tracker.log_artifact(sweep_dir / SWEEP_SUMMARY_FILE)
            if comparison:
                self.tracker.log_artifacts(comparison.markdown.parent, "comparison")
            self.tracker.finish("FAILED" if failed else "FINISHED")
            print(f"mlflow    parent run {self.tracker.run_id} ({self.tracker.display_uri}); "
                  f"{ui_hint(self.tracker.display_uri, self.tracker.runs_table_url())}")
        _launched = None
        if failed:
            sys.exit(EXIT_FAILURE)


def launched_sweep() -> Optional[SweepTracking]:
    """The sweep this process launched and has not ended yet (None: no sweep, or it ended)."""
    return _launched


def end_launched_sweep(status: str) -> Optional[Path]:
    """End the parent run of the sweep this process launched as `status` (KILLED, FAILED); its folder.

    For a sweep that stopped before its end: the jobs already ended their own runs."""
    global _launched
    sweep, _launched = _launched, None
    if sweep is None:
        return None
    if sweep.tracker is not None and sweep.tracker.run_id:
        try:
            sweep.tracker.finish(status)
        except Exception as error:  # noqa: BLE001 - the store is down: the sweep's own ending is the one to report
            log.error("the sweep's MLflow parent run could not be ended %s: %s", status, error)
    return sweep.sweep_dir


def swept_keys(overrides: list[str], params: dict[str, Any]) -> list[str]:
    """The keys a sweep varies: its sweep overrides (`a=1,2`, `range(..)`, `choice(..)`) and the
    sweeper's params (a saved experiment's `hydra.sweeper.params`), in that order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()] + list(params)
    return list(dict.fromkeys(keys))


def sweep_name(overrides: list[str], swept: list[str]) -> str:
    """`sweep temperature_sweep: generation.temperature`, or `sweep generation.temperature, generation.seed`."""
    experiments = [o.partition("=")[2] for o in overrides if o.lstrip("+").startswith("experiment=")]
    keys = ", ".join(swept) or "(nothing swept)"
    return f"sweep {experiments[0]}: {keys}" if experiments else f"sweep {keys}"


def sweep_parent(sweep_dir: Path, tracking: TrackingConfig) -> tuple[Optional[str], Optional[str]]:
    """The sweep's MLflow parent run and, for a job tracked in the same experiment, that experiment's id,
    as written by on_multirun_start (None without tracking)."""
    path = sweep_dir / SWEEP_FILE
    info = read_json(path) if path.is_file() else {}
    same = info.get("experiment") == tracking.experiment and \
        not {"tracking.uri", "tracking.experiment"} & set(info.get("swept", []))
    return info.get("parent_run_id"), info.get("experiment_id") if same else None


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each job folder's number, overrides, final state and headline metrics, in job order."""
    jobs = []
    for hydra_file in sweep_dir.glob("*/.hydra/hydra.yaml"):
        job_dir = hydra_file.parent.parent
        # a plain YAML read: building an OmegaConf tree of all of hydra.yaml for two values cost ~30 ms a job
        hydra_cfg = yaml.load(hydra_file.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)["hydra"]
        status = read_json(job_dir / STATUS_FILE) if (job_dir / STATUS_FILE).is_file() else {}
        summary = read_json(job_dir / SUMMARY_FILE) if (job_dir / SUMMARY_FILE).is_file() else {}
        jobs.append({
            "num": int(hydra_cfg["job"]["num"]),
            "dir": str(job_dir),
            # how the job was started, not what it sets: a resumed sweep's re-run jobs alone carry resume=
            "overrides": [o for o in hydra_cfg["overrides"]["task"] if not o.startswith("resume=")],
            "state": status.get("state", "not started"),
            "reason": status.get("reason", ""),
            "accuracy": summary.get("accuracy"),
            "tokens_per_second": summary.get("tokens_per_second"),
            **({"judge": {k: summary["judge"].get(k) for k in ("mean", "agreement", "kappa")}}
               if summary.get("judge") else {}),
        })
    return sorted(jobs, key=lambda job: job["num"])
