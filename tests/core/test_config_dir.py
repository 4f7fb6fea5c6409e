"""A user's own configs from their own folder: `python -m pipeline --config-dir DIR` (Hydra's flag).

A user's repository holds its experiments and datasets (`DIR/experiment/mine.yaml` is
`+experiment=mine`); the command-line check (pipeline.cli.precheck) composes over the same search
path as the run, so a user's option is checked (and a mistake in it refused in one line, with
nothing created) rather than refused as unknown; a user's own primary config (`--config-name`)
can build on the project's; a resume finds the user's folder and config name again.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from pipeline.cli.precheck import check_jobs
from pipeline.run.resume import expand_command_line
from tests.conftest import DEMO_DATASET, mlflow_client, run_main, run_pipeline, snapshot


def user_repo(root: Path, max_new_tokens: int = 7) -> Path:
    """A user's repository: configs/experiment/mine.yaml over their own dataset file, data/mine.jsonl."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "mine.jsonl").write_text("".join(DEMO_DATASET.read_text().splitlines(keepends=True)[:3]))
    (root / "configs" / "experiment").mkdir(parents=True)
    (root / "configs" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\n"
        f"generation:\n  max_new_tokens: {max_new_tokens}\n"
        "dataset:\n  name: mine\n  path: data/mine.jsonl\n")
    # a primary config of their own, over the project's: --config-name lab
    (root / "configs" / "lab.yaml").write_text("defaults:\n  - config\n  - _self_\ngeneration:\n  max_new_tokens: 9\n")
    return root / "configs"


def test_the_check_composes_a_users_experiment_from_their_folder(tmp_path):
    configs = user_repo(tmp_path)
    checked = check_jobs(["--config-dir", str(configs), "+experiment=mine", "tracking=none"])
    assert checked.problem is None
    assert checked.first_job.generation.max_new_tokens == 7
    assert checked.first_job.dataset.path == "data/mine.jsonl"
    lab = check_jobs(["--config-dir", str(configs), "--config-name", "lab", "tracking=none"])
    assert lab.problem is None and lab.first_job.generation.max_new_tokens == 9
    assert lab.first_job.hydra.run.dir.startswith("runs/")  # the project's settings come with it
    # without the folder, the option does not exist
    assert "experiment=mine: no such option" in check_jobs(["+experiment=mine"]).problem


def test_a_mistake_in_a_users_config_is_one_line_and_creates_nothing(tmp_path, monkeypatch, capsys):
    user_repo(tmp_path, max_new_tokens=-3)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_main(["--config-dir", "configs", "+experiment=mine", "tracking=none"], monkeypatch, capsys)
    assert code == 2
    assert err.strip() == "config error: generation.max_new_tokens=-3 is not allowed: expected an integer >= 1"
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()


def test_a_misspelt_option_or_a_missing_folder_is_named(tmp_path, monkeypatch, capsys):
    user_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["--config-dir", "configs", "+experiment=mien"], monkeypatch, capsys)
    assert code == 2 and "experiment=mien: no such option (did you mean mine?)" in err
    code, err = run_main(["--config-dir", "confs", "+experiment=mine"], monkeypatch, capsys)
    assert code == 2
    assert err.strip() == (f"config error: --config-dir=confs: no such folder ({tmp_path / 'confs'}); give the "
                           "folder that holds your config groups (experiment/, dataset/, runtime/, ...)")
    assert not (tmp_path / "runs").exists()


def test_a_resume_finds_the_users_folder_again(tmp_path):
    folder = tmp_path / "runs" / "2026-01-01" / "10-00-00_abcdef"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  overrides:\n    hydra: []\n    task:\n    - +experiment=mine\n  job:\n    config_name: lab\n"
        "  runtime:\n    config_sources:\n    - {path: /work/x/conf, schema: file, provider: main}\n"
        "    - {path: /home/me/configs, schema: file, provider: command-line}\n"
        "    - {path: '', schema: structured, provider: schema}\n")
    assert expand_command_line([f"resume={folder}"]) == [
        "--config-dir=/home/me/configs", "--config-name=lab", "+experiment=mine", f"hydra.run.dir={folder}",
        "hydra.output_subdir=null", f"resume={folder}"]  # the run's own record (.hydra/) is kept as it is
    # a folder given with the resume is the one used; Hydra's flags go before the overrides (its parser wants them so)
    assert expand_command_line(["generation.seed=3", "--config-dir", "/elsewhere", f"resume={folder}"]) == [
        "--config-dir", "/elsewhere", "--config-name=lab", "+experiment=mine", "generation.seed=3",
        f"hydra.run.dir={folder}", "hydra.output_subdir=null", f"resume={folder}"]


def test_a_users_experiment_through_the_real_command_line(tmp_path):
    user_repo(tmp_path)
    result = run_pipeline(["--config-dir", "configs", "+experiment=mine", "pipeline.until=plan", "tracking=none"],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout[result.stdout.index("{"):])
    assert plan["num_samples"] == 3 and plan["max_new_tokens"] == 7
    assert len(list(tmp_path.glob("runs/*/*/plan.json"))) == 1  # the run folder is under the launch folder


def test_a_users_dataset_without_a_name_is_named_after_its_file(tmp_path):
    """configs/dataset/mine.yaml written as the README shows it (a path, no name): config.json and MLflow say
    `mine`, not the default dataset's name; a dataset.path given on the command line takes its stem too."""
    configs = user_repo(tmp_path)
    (configs / "dataset").mkdir()
    (configs / "dataset" / "mine.yaml").write_text("path: data/mine.jsonl\n")
    (tmp_path / "data" / "other.jsonl.gz").write_bytes(gzip.compress((tmp_path / "data" / "mine.jsonl").read_bytes()))
    for name, args in (("mine", ["dataset=mine"]), ("other", ["dataset.path=data/other.jsonl.gz"])):
        result = run_pipeline(["--config-dir", "configs", *args, f"hydra.run.dir=runs/{name}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads((tmp_path / "runs" / name / "config.json").read_text())["dataset"]["name"] == name
    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    assert sorted(run.data.params["dataset.name"] for run in runs) == ["mine", "other"]
    assert sorted(run.inputs.dataset_inputs[0].dataset.name for run in runs) == ["mine", "other"]
