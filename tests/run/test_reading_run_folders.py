"""Commands pointed at a run folder (issue 24, classes 3, 4 and 8), through the real entry points.

- Every command that reads a run folder (`resume=`, `pipeline.from_transcript=`, `pipeline.report`,
  `pipeline.sync`) first checks that it is one of ours, and refuses anything else in one line, exit 2,
  creating nothing: a folder without status.json, one whose status.json no run wrote, one whose
  transcript holds a dataset's lines.
- A command pointed at a finished run changes nothing in it: not a byte, not a modification time
  (a resume with nothing to do, a refused resume, a re-scoring of it, a report, a sync of a synced run),
  and a resumed sweep leaves its finished jobs' folders alone.
- `pipeline.until=plan` leaves a run marked `planned`, which `resume=last`, a report of a folder of runs
  and a sweep's table pass over; a plan-only sweep's MLflow parent is tagged planned_only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from pipeline.core.config import ASSETS_DIR
from tests.conftest import mlflow_client, run_main, run_pipeline

pytestmark = pytest.mark.slow
SMALL = ["dataset.limit=3", "generation.max_new_tokens=4"]
DATASET = ASSETS_DIR / "datasets" / "addition.jsonl"


def state_of(folder: Path) -> dict[str, tuple]:
    """Every file and folder under `folder`: a file by its sha256 and modification time, a folder by its time
    (which changes when an entry is added or removed)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder",
                                          p.stat().st_mtime_ns)
            for p in sorted([folder, *folder.rglob("*")])}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(launch folder, a finished run tracked in MLflow, a plan-only run started after it)."""
    cwd = tmp_path_factory.mktemp("project")
    finished = run_pipeline([*SMALL, "hydra.run.dir=runs/day/finished"], cwd=cwd)
    assert finished.returncode == 0, finished.stderr
    time.sleep(1.1)  # folders of runs are ordered by their names' time; these two have given names: by age
    planned = run_pipeline([*SMALL, "pipeline.until=plan", "hydra.run.dir=runs/day/planned"], cwd=cwd)
    assert planned.returncode == 0, planned.stderr
    return cwd, cwd / "runs" / "day" / "finished", cwd / "runs" / "day" / "planned"


def test_commands_pointed_at_a_finished_run_change_nothing_in_it(project):
    cwd, run_dir, _ = project
    before = state_of(run_dir)
    for args, module, code, said in [
        ([f"resume={run_dir}"], "pipeline", 0, f"nothing to resume: {run_dir} has completed"),
        ([f"resume={run_dir}", "generation.temperature=0.5"], "pipeline", 2, "the settings differ from the run's"),
        ([f"pipeline.from_transcript={run_dir}", "dataset.scorer.name=contains", "hydra.run.dir=runs/rescored"],
         "pipeline", 0, "contains"),
        ([str(run_dir)], "pipeline.report", 0, "success"),
        ([str(run_dir)], "pipeline.sync", 0, "is already in MLflow"),
    ]:
        result = run_pipeline(args, cwd=cwd, module=module)
        assert result.returncode == code and said in result.stdout + result.stderr, (args, result.stderr[-2000:])
        assert state_of(run_dir) == before, f"{module} {' '.join(args)} changed the run folder"


NOT_OURS = "is not a run folder of this pipeline (it has no status.json)"
FOREIGN_STATUS = "status.json is not a status this pipeline writes"
DATASET_LINES = "transcript.jsonl:1: not a transcript record (a JSON object without sample_id"


def _no_status(folder: Path, run_dir: Path) -> None:
    """A dataset dropped into a folder as if it were a run's transcript."""
    folder.mkdir()
    shutil.copy(DATASET, folder / "transcript.jsonl")


def _foreign_status(folder: Path, run_dir: Path) -> None:
    _no_status(folder, run_dir)
    (folder / "status.json").write_text('{"ok": true}\n')


def _dataset_as_transcript(folder: Path, run_dir: Path) -> None:
    """One of our runs (its status, config and record), with a dataset where its transcript was; not in MLflow."""
    shutil.copytree(run_dir, folder)
    shutil.copy(DATASET, folder / "transcript.jsonl")
    (folder / "tracking.json").unlink()


@pytest.mark.parametrize("make, message", [(_no_status, NOT_OURS), (_foreign_status, FOREIGN_STATUS),
                                           (_dataset_as_transcript, DATASET_LINES)],
                         ids=["no status.json", "a status no run wrote", "a dataset as its transcript"])
def test_a_folder_that_is_not_one_of_our_runs_is_refused_by_every_command_that_reads_runs(
        project, tmp_path, monkeypatch, capsys, make, message):
    from pipeline.cli.report import main as report
    from pipeline.cli.sync import main as sync

    _, run_dir, _ = project
    folder = tmp_path / "folder"
    make(folder, run_dir)
    monkeypatch.chdir(tmp_path)
    before = state_of(tmp_path)

    def pipeline(argv):
        return run_main(argv, monkeypatch, capsys)

    def sync_code(argv):
        with pytest.raises(SystemExit) as exited:
            sync(argv)
        return exited.value.code, capsys.readouterr().err

    commands = {"from_transcript": lambda: pipeline([f"pipeline.from_transcript={folder}", "tracking=none"]),
                "resume": lambda: pipeline([f"resume={folder}"]),
                "report --diff": lambda: (report(["--diff", str(folder), str(run_dir)]), capsys.readouterr().err),
                "sync": lambda: sync_code([str(folder)])}
    if make is not _dataset_as_transcript:  # the runs table reads no transcript: a run with a broken one is a row
        commands["report"] = lambda: (report([str(folder)]), capsys.readouterr().err)
    for name, command in commands.items():
        code, stderr = command()
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and "Traceback" not in stderr, (name, stderr)
        assert message in lines[-1] and lines[-1].startswith(("error: ", "config error: ")), (name, lines)
        assert state_of(tmp_path) == before, f"{name} created or changed something"


def test_from_transcript_of_a_dataset_folder_through_the_real_command_line(tmp_path):
    """The case as the issue found it: a run started and failed with KeyError 'sample_id', leaving a folder."""
    _no_status(tmp_path / "data", tmp_path)
    result = run_pipeline(["pipeline.from_transcript=data"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "KeyError" not in result.stderr
    assert NOT_OURS in result.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "no run folder, no MLflow store"


def test_a_plan_only_run_is_planned_and_passed_over(project):
    cwd, finished, planned = project
    assert json.loads((planned / "status.json").read_text())["state"] == "planned"
    # resume=last takes the newest run with something to do, else the newest finished one, never a plan
    last = run_pipeline(["resume=last"], cwd=cwd)
    assert last.returncode == 0 and f"nothing to resume: {finished} has completed" in last.stdout, last.stderr
    again = run_pipeline([f"resume={planned}"], cwd=cwd)
    assert again.returncode == 0 and f"nothing to resume: {planned} was only planned" in again.stdout
    assert f"resume={planned} pipeline.until=summarize" in again.stdout
    table = run_pipeline([str(cwd / "runs" / "day")], cwd=cwd, module="pipeline.report")
    assert table.returncode == 0, table.stderr
    assert "finished" in table.stdout and "planned" not in table.stdout, table.stdout
    refused = run_pipeline([str(planned)], cwd=cwd, module="pipeline.sync")
    assert refused.returncode == 2 and "was only planned (pipeline.until=plan)" in refused.stderr, refused.stderr


def test_a_plan_only_sweep_is_no_table_of_dashes_and_its_resume_leaves_the_jobs_alone(tmp_path):
    data = tmp_path / "data.jsonl"
    shutil.copy(DATASET, data)
    sweep = ["-m", "generation.seed=1,2", "pipeline.until=plan", "dataset.limit=1", "dataset.path=data.jsonl",
             "hydra.sweep.dir=runs/sweep"]
    result = run_pipeline(sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sweep     2 jobs, 0 failed, 2 only planned" in result.stdout and "job  swept" not in result.stdout
    (parent,) = mlflow_client(tmp_path).search_runs(["1"])
    assert parent.info.status == "FINISHED" and parent.data.tags["planned_only"] == "true"
    sweep_dir = tmp_path / "runs" / "sweep"
    report = run_pipeline([str(sweep_dir)], cwd=tmp_path, module="pipeline.report")
    assert report.returncode == 2 and "its runs were only planned" in report.stderr, report.stderr

    def resume(code: int) -> str:
        (sweep_dir / "sweep_summary.json").unlink()  # as a sweep stopped before its end leaves it
        resumed = run_pipeline([f"resume={sweep_dir}"], cwd=tmp_path)
        assert resumed.returncode == code, resumed.stderr
        return resumed.stderr

    jobs = {job: state_of(sweep_dir / job) for job in ("0", "1")}
    resume(0)
    assert {job: state_of(sweep_dir / job) for job in jobs} == jobs, "a resumed sweep rewrote a finished job"

    # a job refused inside the sweep (its dataset changed since it ran) leaves its folder as it was, run.log too
    (sweep_dir / "1" / "status.json").write_text('{"state": "interrupted", "reason": "by hand"}')
    job = state_of(sweep_dir / "1")
    data.write_text(data.read_text().replace("What is", "What's"))
    assert "dataset.path='data.jsonl': the file's content changed" in resume(1)
    assert state_of(sweep_dir / "1") == job, "a refused resume of a sweep's job changed its folder"

    # a job that never started gets its own record of the command (.hydra/), as the sweep would have written it
    shutil.copy(DATASET, data)
    shutil.rmtree(sweep_dir / "1")
    resume(0)
    assert json.loads((sweep_dir / "1" / "status.json").read_text())["state"] == "planned"
    recorded = (sweep_dir / "1" / ".hydra" / "overrides.yaml").read_text()
    assert "generation.seed=2" in recorded and (sweep_dir / "1" / ".hydra" / "hydra.yaml").is_file()
