"""Sweeps end to end through `python -m pipeline -m`: one model load per process, every launcher
(default, joblib, submitit_local; SLURM composed only) and the Optuna sweeper on the demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli.precheck import check_command_line
from tests.conftest import run_pipeline

pytestmark = pytest.mark.slow


def job_records(tmp_path: Path, name: str) -> list[dict]:
    """Each job's `name` JSON file, in job order."""
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")
    folders = sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [json.loads((folder / name).read_text()) for folder in folders]


def test_a_sweep_loads_once_per_model_and_says_so_in_its_records(tmp_path, tiny_model):
    result = run_pipeline(["-m", f"runtime.model=demo,demo,{tiny_model}", "dataset.limit=4", "tracking=none"],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loads = job_records(tmp_path, "load.json")
    assert [entry["reused"] for entry in loads] == [False, True, False]
    assert loads[1]["reused_from"].endswith("/0") and loads[0]["key"] == loads[1]["key"] != loads[2]["key"]
    assert "changed" in loads[2]["reason"] and loads[2]["loads_in_process"] == 2
    assert len({entry["process"] for entry in loads}) == 1
    summaries = job_records(tmp_path, "summary.json")
    assert summaries[1]["stage_seconds"]["load"] < 0.1 < summaries[0]["stage_seconds"]["load"]


# The joblib launcher: tests/test_parallel_sweep.py (8 jobs on 2 worker processes, every run in MLflow).


def test_the_submitit_local_launcher_runs_each_job_as_its_own_process(tmp_path):
    result = run_pipeline(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                           "generation.seed=1,2", "dataset.limit=2", "tracking=none"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loads = job_records(tmp_path, "load.json")
    assert len({entry["process"] for entry in loads}) == 2 and not any(entry["reused"] for entry in loads)
    assert [s["num_samples"] for s in job_records(tmp_path, "summary.json")] == [2, 2]


def test_the_slurm_launcher_config_composes_with_one_gpu_per_job():
    from hydra import compose, initialize_config_dir

    from pipeline.core.config import CONF_DIR, register

    register()
    assert check_command_line(["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"]) is None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1


def test_launcher_and_sweeper_choices_pass_the_precheck_and_bad_values_do_not():
    assert check_command_line(["-m", "hydra/launcher=joblib", "generation.seed=1,2"]) is None
    assert check_command_line(["+hparams_search=generation_optuna"]) is None
    assert check_command_line(["-m", "hydra/sweeper=optuna", "generation.temperature=interval(0,1)"]) is None
    assert "hydra/launcher=nope: no such option" in check_command_line(["-m", "hydra/launcher=nope", "generation.seed=1,2"])
    assert "generation.top_p=1.5" in check_command_line(
        ["-m", "hydra/sweeper=optuna", "generation.top_p=interval(0.5,1.5)"])
    assert "pipeline.objective='speed'" in check_command_line(["+hparams_search=generation_optuna",
                                                               "pipeline.objective=speed"])


def test_an_optuna_search_maximises_the_objective_over_generation_settings(tmp_path):
    result = run_pipeline(["+hparams_search=generation_optuna", "hydra.sweeper.n_trials=3", "dataset.limit=4",
                           "tracking=none"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "runs" / "multirun").glob("*/*")
    found = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    summaries = job_records(tmp_path, "summary.json")
    assert len(summaries) == 3
    assert found["best_value"] == max(summary["accuracy"] for summary in summaries)
    assert set(found["best_params"]) == {"generation.temperature", "generation.top_p", "generation.top_k"}
    assert 0.0 <= found["best_params"]["generation.temperature"] <= 1.5
    assert [entry["reused"] for entry in job_records(tmp_path, "load.json")] == [False, True, True]
