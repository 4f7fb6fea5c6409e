"""What the SLURM launcher asks of SLURM, from the composed config, as the sbatch script submitit would
submit (no cluster needed): the GPU settings reach the job with the in-process model, and a model behind
a server (or runtime.device=cpu) asks for no GPU. A bad points_per_job is refused before anything is
created. The real submission is tests/cluster/test_slurm_sweep.py's."""

from __future__ import annotations

import pytest
import submitit
from hydra import compose
from omegaconf import OmegaConf

from pipeline.core.config_search import initialize_configs
from tests.conftest import run_main


def sbatch_script(tmp_path, *overrides: str) -> str:
    from hydra_plugins.pipeline_launcher.slurm import SlurmLauncher

    with initialize_configs(None):
        config = compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hydra.launcher.cpus_per_task=4", "hydra.launcher.mem_gb=24", "hydra.launcher.timeout_min=30",
            "hydra.launcher.setup=[\"source .venv/bin/activate\"]", *overrides])
    settings = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    settings.pop("_target_")
    launcher = SlurmLauncher(**settings)
    launcher.config = config
    return launcher._executor(submitit)._executor._make_submission_file_text("python -m job", "uid")


def test_the_gpu_settings_reach_the_job_with_the_in_process_model(tmp_path):
    lines = sbatch_script(tmp_path, "hydra.launcher.gpus_per_node=2").splitlines()
    for line in ("#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=24GB", "#SBATCH --time=30",
                 "#SBATCH --partition=gpu", "source .venv/bin/activate"):
        assert line in lines, line


@pytest.mark.parametrize("needs_none", ["backend=openai", "runtime.device=cpu"])
def test_jobs_that_need_no_gpu_ask_for_none(tmp_path, needs_none):
    script = sbatch_script(tmp_path, needs_none)
    assert "--gpus" not in script and "--gres" not in script and "#SBATCH --cpus-per-task=4" in script.splitlines()


def test_points_per_job_below_one_is_refused_before_anything_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["-m", "hydra/launcher=slurm", "hydra.launcher.points_per_job=0",
                          "generation.temperature=0,1"], monkeypatch, capsys)
    assert code == 2
    assert "hydra.launcher.points_per_job=0 is not allowed: expected a whole number of 1 or more" in err
    assert list(tmp_path.iterdir()) == []
