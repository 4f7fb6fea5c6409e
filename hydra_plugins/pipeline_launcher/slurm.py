"""SLURM through submitit, where each job's failure is its own, a resumed sweep submits only what is
left, and one job may run several sweep points.

`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml) selects it. It is hydra-submitit-launcher's
SLURM launcher with these changes:

- `points_per_job`: a job runs that many sweep points one after another in one process, so an
  in-process model loads once per job (pipeline.backends.transformers.reuse), not once per point.
  Each point keeps its own folder and MLflow run: the table and MLflow look the same either way.
- The launcher waits for every job and then settles the points a job left without a final state
  (pipeline.run.cluster_jobs: cancelled, timed out, a node lost, setup lines that failed), where
  submitit's launcher raised at the first failed job. Hydra gets a failed point's result as NaN, as
  in-process sweeps give it (pipeline.__main__._fail), so the sweep ends with its table, the
  parent run FAILED and exit 1.
- A resumed sweep (`resume=<sweep folder>`) submits only the points that did not end with success.
- No GPU is asked where the jobs need none: a model behind a server (a kind not `in_process`: `backend=openai`) or
  `runtime.device=cpu`.
- In a job, SIGTERM (`scancel`, the time limit) and SIGUSR2 (SLURM's warning `signal_delay_s` before
  the time limit) end the running point's run as interrupted (KILLED in MLflow), resumable; submitit
  would have ignored SIGTERM and requeued on SIGUSR2.

The jobs find the sweep's parent run through `sweep.json` in the sweep folder, which must be on a
disk the nodes share (pipeline.tracking.sweep).
"""


# no `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules, where a dataclass
# with string annotations cannot be built
import copy
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, _save_config, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)
Point = Tuple[List[str], int]  # a sweep point: its overrides and its job number
FIRST_POLL_S, POLL_S, QUICK_POLLS_S = 2.0, 15.0, 60.0  # sacct every 2 s for the first minute, then every 15 s


@dataclass
class PipelineSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.pipeline_launcher.slurm.SlurmLauncher"
    points_per_job: int = 1  # sweep points run one after another in one SLURM job (the model loads once per job)


ConfigStore.instance().store(group="hydra/launcher", name="pipeline_slurm", node=PipelineSlurmConf,
                             provider="llm-pipeline")


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, points_per_job: int = 1, **params: Any) -> None:
        super().__init__(**params)  # points_per_job < 1 is refused by the command-line check (pipeline.cli.precheck)
        self.points_per_job = points_per_job

    # --- in the launching process ----------------------------------------------------------------

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        points: List[Point] = [(list(o), initial_job_idx + n) for n, o in enumerate(job_overrides)]
        returns: Dict[int, JobReturn] = {}
        if self.config.get("resume") is not None:
            until = str(OmegaConf.select(self.config, "pipeline.until"))
            from pipeline.run.cluster_jobs import finished

            for overrides, num in points:
                if finished(self._job_dir(overrides, num), until):
                    returns[num] = _result(overrides, None)
            if returns:
                log.info("resume: %d of %d points ended with success; submitting the other %d",
                         len(returns), len(points), len(points) - len(returns))
        left = [point for point in points if point[1] not in returns]
        if left:
            executor = self._executor(submitit)
            batches = [left[i:i + self.points_per_job] for i in range(0, len(left), self.points_per_job)]
            for batch in batches:
                log.info("\tone SLURM job: %s", ", ".join(f"#{num} {' '.join(o)}" for o, num in batch))
            state = Singleton.get_state()
            try:
                jobs = executor.map_array(self, batches, [state] * len(batches))
            except Exception as error:  # noqa: BLE001 - sbatch refused them: a setting this cluster cannot give
                raise _refused(error, executor) from error
            try:
                _wait(jobs)
            except BaseException:  # Ctrl-C or SIGTERM here: the jobs stop too (each ends its run KILLED)
                for job in jobs:
                    job.cancel(check=False)
                raise
            for job, batch in zip(jobs, batches):
                returns.update(self._outcome(job, batch))
            # submitit's pickles hold the composed config, a password in tracking.uri too: the run folders keep
            # no secret (pipeline.core.redact); the jobs' logs stay
            for pickle in _submitit_root(executor).rglob("*.pkl"):
                pickle.unlink(missing_ok=True)
        return [returns[num] for _, num in points]

    def _executor(self, submitit: Any) -> Any:
        """submitit's executor with the launcher's settings, less a GPU where the jobs need none."""
        params = dict(self.params)
        from pipeline.backends import registry

        backend = OmegaConf.select(self.config, "backend.name") or "transformers"
        device = OmegaConf.select(self.config, "runtime.device")
        needs_none = (f"backend={backend}" if not registry.kind(backend).in_process
                      else "runtime.device=cpu" if device == "cpu" else "")
        if needs_none and (params.get("gpus_per_node") or params.get("gpus_per_task")):
            log.info("the jobs ask for no GPU: %s", needs_none)
            params.update(gpus_per_node=None, gpus_per_task=None)
        if params.get("gpus_per_node") == 0:
            params["gpus_per_node"] = None
        executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in base else f"slurm_{key}": value for key, value in params.items()})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("SLURM sweep folder: %s", sweep_dir)
        return executor

    def _outcome(self, job: Any, batch: List[Point]) -> Dict[int, JobReturn]:
        """Each point's result: as the job returned it, or settled from the job's end."""
        try:
            return {num: ret for (_, num), ret in zip(batch, job.result())}
        except Exception as error:  # noqa: BLE001 - whatever ended the job, its points are settled below
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        from pipeline.core.config import to_config
        from pipeline.run.cluster_jobs import settle

        scheduler_state = job.state
        detail = f"{message[:300]}; its log: {job.paths.stderr}"
        outcome = {}
        for overrides, num in batch:
            config = self._point_config(overrides, num)
            job_dir = Path(config.hydra.runtime.output_dir)
            if not (job_dir / config.hydra.output_subdir).is_dir():
                self._write_hydra_files(config)  # a point that never started: listed in the sweep table all the same
            state = settle(job_dir, job.job_id, scheduler_state, detail, to_config(config).tracking)
            log.error("job %d: %s (SLURM job %s ended %s)", num, state, job.job_id, scheduler_state)
            outcome[num] = _result(overrides, math.nan)
        return outcome

    def _point_config(self, overrides: List[str], num: int) -> DictConfig:
        """A point's config as its job composes it, with its folder in hydra.runtime.output_dir."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra):
            config.hydra.job.num = num
            config.hydra.runtime.output_dir = str(Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
                                                  .absolute())
        return config

    def _job_dir(self, overrides: List[str], num: int) -> Path:
        return Path(self._point_config(overrides, num).hydra.runtime.output_dir)

    @staticmethod
    def _write_hydra_files(config: DictConfig) -> None:
        """`.hydra/` as Hydra writes it when a job starts (its secrets masked as the job masks them)."""
        from pipeline.core.redact import mask_secrets_in_files

        folder = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
        task = copy.deepcopy(config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        _save_config(task, "config.yaml", folder)
        _save_config(OmegaConf.masked_copy(config, "hydra"), "hydra.yaml", folder)
        _save_config(config.hydra.overrides.task, "overrides.yaml", folder)
        mask_secrets_in_files([folder / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")])

    # --- in the SLURM job ------------------------------------------------------------------------

    def __call__(self, batch: List[Point],  # type: ignore[override]
                 singleton_state: Dict[Any, Any]) -> List[JobReturn]:
        """Run the job's points one after another in this process (the model stays loaded between them)."""
        import submitit

        from pipeline.core.errors import Interrupted

        Singleton.set_state(singleton_state)
        setup_globals()

        def stop(signum: int, frame: object) -> None:
            raise Interrupted("stopped by SIGTERM" if signum == signal.SIGTERM else
                              "SLURM's time limit is near (SIGUSR2): the job ends before it")
        signal.signal(signal.SIGTERM, stop)  # submitit ignores SIGTERM and requeues on SIGUSR2: a run ends here
        signal.signal(signal.SIGUSR2, stop)
        returns = []
        for overrides, num in batch:
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config.hydra.job):
                config.hydra.job.id = submitit.JobEnvironment().job_id
                config.hydra.job.num = num
            returns.append(run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
        return returns

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return None  # never requeued: a point stopped by the time limit is continued by resuming the sweep


def _wait(jobs: List[Any]) -> None:
    """Until every job has ended: one sacct call for all of them per poll (submitit's own wait can take
    up to 10 minutes to notice a job that ended without a result, such as a cancelled one)."""
    started = time.monotonic()
    while True:
        if jobs:
            jobs[0].watcher.update()
        if all(job.done() for job in jobs):
            return
        time.sleep(FIRST_POLL_S if time.monotonic() - started < QUICK_POLLS_S else POLL_S)


def _refused(error: Exception, executor: Any) -> Exception:
    """sbatch's refusal, in one line naming the settings to check; its submission files are taken away
    (a resumed sweep's earlier jobs keep their logs)."""
    from pipeline.core.errors import UserError

    root = _submitit_root(executor)
    for leftover in [*root.glob(".submission_file_*.sh"), *root.glob("*.pkl")]:
        leftover.unlink(missing_ok=True)
    try:
        root.rmdir()
    except OSError:
        pass  # earlier jobs' folders: kept
    said = [line.strip() for line in str(error).splitlines() if "error" in line.lower()] or [str(error).strip()]
    return UserError(f"SLURM refused the jobs ({said[-1][:300]}): check hydra.launcher.partition, gpus_per_node, "
                     "cpus_per_task, mem_gb and timeout_min against what the cluster has (sinfo -N -l)")


def _submitit_root(executor: Any) -> Path:
    """The folder of submitit's files (`<sweep folder>/.submitit`, its default, above the `%j` of each job)."""
    folder = Path(str(executor.folder))
    return folder.parent if "%j" in folder.name else folder


def _result(overrides: List[str], value: Optional[float]) -> JobReturn:
    """A point's result for Hydra's sweeper, for a point not run now (done before, or settled)."""
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=value)
