"""Which GPU a sweep job gets when several jobs run at once on a machine with several GPUs.

With `runtime.device=auto`, a job started by a parallel launcher (joblib, submitit) on a machine
that shows it N > 1 CUDA devices takes `cuda:<job number mod N>`, so N jobs run side by side, one
per device, instead of all landing on cuda:0. Jobs of the default launcher run one after another
and all use the first device (which also lets them share one loaded model: pipeline.backends.transformers.reuse). A
scheduler that hands each job its own GPU (SLURM through CUDA_VISIBLE_DEVICES) leaves a job one
device, so nothing changes there. An explicit `runtime.device=cuda:K` is always kept.

It only names the device; the plan stage records it with its reason.
"""

from __future__ import annotations

from typing import Optional

# launchers that run a sweep's jobs one after another in this process: Hydra's basic one, and ours
# (the default, conf/config.yaml), which is the basic one composing job configs from a template
SEQUENTIAL_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                        "hydra_plugins.pipeline_launcher.InProcessLauncher")


def spread_device(job_num: int, device_count: int) -> str:
    """The device of job `job_num` among `device_count` CUDA devices."""
    return f"cuda:{job_num % device_count}"


def parallel_job_num() -> Optional[int]:
    """This job's number when a parallel Hydra launcher started it, else None (a single run, or in order)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or hydra.launcher.get("_target_") in SEQUENTIAL_LAUNCHERS:
        return None
    return int(hydra.job.num)


def parallel_job_device(device_count: int) -> Optional[tuple[str, str]]:
    """(device, reason) for a parallel sweep job on a machine with several GPUs; None otherwise."""
    job = parallel_job_num() if device_count > 1 else None
    if job is None:
        return None
    device = spread_device(job, device_count)
    return device, (f"auto: job {job} of a parallel sweep on {device_count} CUDA devices takes {device} "
                    "(job number mod device count), so parallel jobs do not share a GPU")
