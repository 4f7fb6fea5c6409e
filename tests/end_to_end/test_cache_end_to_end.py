"""The response cache through `python -m pipeline`: a second run is read from it, a changed setting misses,
and a joblib sweep's parallel jobs share it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import mlflow_client, only_run_dir, run_pipeline

pytestmark = pytest.mark.slow


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "transcript.jsonl").read_text().splitlines()]


def answers(run_dir: Path) -> dict[tuple[str, int], str]:
    return {(r["sample_id"], r["sample_index"]): r["response"] for r in records(run_dir)}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_a_second_run_is_read_from_the_cache_and_a_changed_setting_misses(tmp_path):
    cache = ["cache.enabled=true", f"cache.dir={tmp_path / 'cache'}", "dataset.limit=6"]
    folders = {name: tmp_path / name for name in ("first", "again", "changed")}
    for folder in folders.values():
        folder.mkdir()

    first = run_pipeline([*cache, "tracking=none"], cwd=folders["first"])
    assert first.returncode == 0, first.stderr
    first_dir = only_run_dir(folders["first"])
    assert summary(first_dir)["cache_hits"] == 0 and not any(r["cached"] for r in records(first_dir))

    again = run_pipeline(cache, cwd=folders["again"])  # tracked: the hits reach MLflow too
    assert again.returncode == 0, again.stderr
    again_dir = only_run_dir(folders["again"])
    assert answers(again_dir) == answers(first_dir)
    assert all(r["cached"] for r in records(again_dir)) and summary(again_dir)["cache_hits"] == 6
    assert "cache     6 model generation(s) read from the response cache" in again.stdout
    assert "deferred to the first request" not in (again_dir / "run.log").read_text()  # no model was loaded
    client = mlflow_client(folders["again"])
    (run,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    assert run.data.metrics["cache_hits"] == 6 and run.data.params["cache.enabled"] == "True"

    changed = run_pipeline([*cache, "tracking=none", "generation.max_new_tokens=7"], cwd=folders["changed"])
    assert changed.returncode == 0, changed.stderr
    changed_dir = only_run_dir(folders["changed"])
    assert summary(changed_dir)["cache_hits"] == 0 and not any(r["cached"] for r in records(changed_dir))


def test_a_joblib_sweeps_parallel_jobs_share_the_cache(tmp_path):
    sweep = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "generation.temperature=0.5",
             "generation.seed=1,2", "dataset.limit=3", "tracking=none", "cache.enabled=true",
             f"cache.dir={tmp_path / 'cache'}"]
    jobs = {}
    for name in ("first", "again"):
        (tmp_path / name).mkdir()
        result = run_pipeline(sweep, cwd=tmp_path / name)
        assert result.returncode == 0, result.stderr
        (sweep_dir,) = (tmp_path / name / "runs" / "multirun").glob("*/*")
        jobs[name] = [sweep_dir / str(n) for n in range(2)]
    assert [summary(job)["cache_hits"] for job in jobs["first"]] == [0, 0]  # both wrote, at the same time
    assert [summary(job)["cache_hits"] for job in jobs["again"]] == [3, 3]  # seeded sampling is cached
    assert [answers(job) for job in jobs["again"]] == [answers(job) for job in jobs["first"]]
    stats = run_pipeline(["--dir", str(tmp_path / "cache"), "--json"], cwd=tmp_path, module="pipeline.cache")
    assert json.loads(stats.stdout)["entries"] == 6
