"""Sweeps: one MLflow parent run per multirun, with every job's run as its child.

A Hydra callback (configured in conf/config.yaml) runs in the launching process. Before any job
starts it creates the MLflow store and experiment (so parallel launchers never race to create
them) and the parent run, and writes `sweep.json` into the sweep folder; each job reads the
parent's id from there, whatever process or machine it runs in. After the last job it prints a
table of the jobs, writes `sweep_summary.json`, logs it to the parent and ends the parent
FINISHED, or FAILED when any job failed (and the command then exits 1).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.config import register, to_config
from pipeline.console import sweep_table
from pipeline.errors import EXIT_FAILURE
from pipeline.files import read_json, write_json
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)
SWEEP_FILE = "sweep.json"


class SweepTracking(Callback):
    def __init__(self) -> None:
        self.tracker: Optional[Tracker] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        register()
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        params = OmegaConf.to_container(config.hydra.sweeper.params) if config.hydra.sweeper.get("params") else {}
        overrides = list(config.hydra.overrides.task)
        info: dict[str, Any] = {"sweep_dir": str(sweep_dir), "overrides": overrides, "params": params}
        settings = to_config(config)
        self.tracker = Tracker(settings.tracking)
        if self.tracker.enabled:
            self.tracker.start(run_name=f"sweep {sweep_dir.name}", tags={
                "sweep_dir": str(sweep_dir), "overrides": " ".join(overrides), "run_type": "sweep"})
            self.tracker.log_params({"sweep.overrides": " ".join(overrides),
                                     **{f"sweep.{key}": value for key, value in params.items()}})
            info.update(parent_run_id=self.tracker.run_id, experiment_id=self.tracker.experiment_id)
        write_json(sweep_dir / SWEEP_FILE, info)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = collect_jobs(sweep_dir)
        failed = [job for job in jobs if job["state"] != "success"]
        write_json(sweep_dir / "sweep_summary.json", {"jobs": jobs, "failed": len(failed)})
        print(f"\nsweep     {len(jobs)} jobs, {len(failed)} failed, in {sweep_dir}")
        print(sweep_table(jobs))
        if self.tracker and self.tracker.run_id:
            accuracies = [job["accuracy"] for job in jobs if job.get("accuracy") is not None]
            self.tracker.log_metrics({"jobs": len(jobs), "jobs_failed": len(failed),
                                      **({"best_accuracy": max(accuracies)} if accuracies else {})})
            self.tracker.log_artifact(sweep_dir / "sweep_summary.json")
            self.tracker.finish("FAILED" if failed else "FINISHED")
            print(f"mlflow    parent run {self.tracker.run_id} ({self.tracker.display_uri}); "
                  f"`make ui`, then http://127.0.0.1:5000/{self.tracker.runs_table_url()}")
        if failed:
            sys.exit(EXIT_FAILURE)


def parent_run_id(sweep_dir: Path) -> Optional[str]:
    """The sweep's MLflow parent run, as written by on_multirun_start (None without tracking)."""
    path = sweep_dir / SWEEP_FILE
    return read_json(path).get("parent_run_id") if path.is_file() else None


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each job folder's number, overrides, final state and headline metrics, in job order."""
    jobs = []
    for hydra_file in sweep_dir.glob("*/.hydra/hydra.yaml"):
        job_dir = hydra_file.parent.parent
        hydra_cfg = OmegaConf.load(hydra_file).hydra
        status = read_json(job_dir / "status.json") if (job_dir / "status.json").is_file() else {}
        summary = read_json(job_dir / "summary.json") if (job_dir / "summary.json").is_file() else {}
        jobs.append({
            "num": int(hydra_cfg.job.num),
            "dir": str(job_dir),
            "overrides": list(hydra_cfg.overrides.task),
            "state": status.get("state", "not started"),
            "reason": status.get("reason", ""),
            "accuracy": summary.get("accuracy"),
            "tokens_per_second": summary.get("tokens_per_second"),
        })
    return sorted(jobs, key=lambda job: job["num"])
