"""Scores, re-scoring and reports end to end: a real small sweep of the demo model, then
`python -m pipeline pipeline.from_transcript=...` and `python -m pipeline.report` on its folders."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from pipeline.core.transcript import read_transcript
from pipeline.scoring.intervals import paired_difference
from tests.conftest import mlflow_client, run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, Path]:
    """(launch folder, sweep folder) of a two-job temperature sweep over 20 samples, tracked in MLflow."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_pipeline(["-m", "generation.temperature=0,1.5", "dataset.limit=20"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (cwd / "runs" / "multirun").glob("*/*")
    return cwd, sweep_dir


def scores(job: Path) -> dict[str, float]:
    return {r["sample_id"]: r["score"] for r in read_transcript(job / "transcript.jsonl")}


def report(args: list[str], cwd: Path):
    return run_pipeline(args, cwd=cwd, module="pipeline.report")


def test_the_summary_holds_the_interval_and_the_speed_figures(sweep):
    _, sweep_dir = sweep
    summary = json.loads((sweep_dir / "1" / "summary.json").read_text())
    values = list(scores(sweep_dir / "1").values())
    assert summary["accuracy"] == pytest.approx(sum(values) / len(values)) and summary["scorer"] == "exact_match"
    assert summary["accuracy_ci_method"] == "wilson" and summary["accuracy_ci_samples"] == 20
    assert summary["accuracy_ci_low"] < summary["accuracy"] < summary["accuracy_ci_high"]
    assert summary["prefill_tokens_per_second"] > 0 and summary["decode_tokens_per_second"] > 0
    assert summary["ttft_p95_s"] >= summary["ttft_p50_s"] > 0
    assert summary["peak_memory_kind"] == "process_peak_rss" and summary["peak_memory_bytes"] > 50 * 2**20


def test_report_puts_the_runs_side_by_side_and_says_whether_the_lead_is_more_than_noise(sweep):
    cwd, sweep_dir = sweep
    result = report([str(sweep_dir)], cwd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["run", "generation.temperature"]
    for job, temperature in [("0", "0.0"), ("1", "1.5")]:
        summary = json.loads((sweep_dir / job / "summary.json").read_text())
        row = next(line for line in lines if line.startswith(job + " "))
        assert row.split()[1:3] == [temperature, "success"]
        assert (f"{summary['accuracy']:.3f} [{summary['accuracy_ci_low']:.3f}, {summary['accuracy_ci_high']:.3f}]"
                in row)
    best, other = scores(sweep_dir / "0"), scores(sweep_dir / "1")
    difference, low, high = paired_difference([other[s] for s in sorted(best)], [best[s] for s in sorted(best)])
    verdict = lines[-1]
    assert verdict.startswith("best: 0 at ") and f"minus 1: {difference:+.3f}" in verdict
    assert f"[{low:+.3f}, {high:+.3f}] over 20 shared samples" in verdict
    assert verdict.endswith("more than noise" if low > 0 else "within noise (the interval includes 0)")

    markdown = report([str(sweep_dir / "0"), str(sweep_dir / "1"), "--markdown"], cwd)
    assert markdown.returncode == 0, markdown.stderr
    table = [line for line in markdown.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 4 and table[1].startswith("| --- |") and "| 1.5 | success |" in table[3]


def test_diff_shows_the_setting_that_differs_and_the_samples_where_the_runs_disagree(sweep):
    cwd, sweep_dir = sweep
    result = report(["--diff", str(sweep_dir / "0"), str(sweep_dir / "1"), "--limit", "3"], cwd)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "config.json: 1 setting(s) differ" in out
    assert re.search(r"^generation\.temperature\s+0\.0\s+1\.5$", out, re.MULTILINE)
    a = {r["sample_id"]: r for r in read_transcript(sweep_dir / "0" / "transcript.jsonl")}
    b = {r["sample_id"]: r for r in read_transcript(sweep_dir / "1" / "transcript.jsonl")}
    disagree = [s for s in a if (a[s]["score"], a[s]["response"]) != (b[s]["score"], b[s]["response"])]
    in_score = sum(a[s]["score"] != b[s]["score"] for s in disagree)
    assert f"samples: {len(disagree)} of 20 shared answers disagree ({in_score} in score" in out
    first = disagree[0]
    assert re.search(rf"^{first}\s+{json.dumps(a[first]['reference'])}\s+{re.escape(json.dumps(a[first]['response']))}",
                     out, re.MULTILINE)
    if len(disagree) > 3:
        assert f"... and {len(disagree) - 3} more" in out


def test_from_transcript_rescores_into_a_new_folder_and_leaves_the_source_alone(sweep):
    cwd, sweep_dir = sweep
    source = sweep_dir / "1"
    before = {name: hashlib.sha256((source / name).read_bytes()).hexdigest()
              for name in ("transcript.jsonl", "summary.json", "config.json")}
    result = run_pipeline([f"pipeline.from_transcript={source}", "dataset.scorer.name=contains",
                           "hydra.run.dir=rescored"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "load:" not in result.stderr and "execute:" not in result.stderr  # no model was loaded or run
    target = cwd / "rescored"
    records = read_transcript(target / "transcript.jsonl")
    expected = [float(r["reference"].strip() in r["response"].strip()) for r in records]
    assert [r["score"] for r in records] == expected
    assert [r["response"] for r in records] == [r["response"] for r in read_transcript(source / "transcript.jsonl")]
    summary = json.loads((target / "summary.json").read_text())
    assert summary["scorer"] == "contains" and summary["accuracy"] == pytest.approx(sum(expected) / len(expected))
    assert "contains" in result.stdout and f"{summary['accuracy']:.3f}" in result.stdout
    config = json.loads((target / "config.json").read_text())
    assert config["dataset"]["scorer"]["name"] == "contains" and config["generation"]["temperature"] == 1.5
    assert config["pipeline"]["from_transcript"] == str(source.resolve())
    assert before == {name: hashlib.sha256((source / name).read_bytes()).hexdigest() for name in before}

    client = mlflow_client(cwd)
    runs = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    (source_run,) = [r for r in runs if r.data.tags.get("run_dir") == str(source.resolve())]
    (rescore_run,) = [r for r in runs if r.data.tags.get("run_type") == "rescore"]
    assert rescore_run.data.tags["source_run_id"] == source_run.info.run_id
    assert rescore_run.data.tags["source_run_dir"] == str(source.resolve())
    assert rescore_run.data.metrics["accuracy"] == pytest.approx(summary["accuracy"])
    assert rescore_run.info.status == "FINISHED"
    assert json.loads((target / "source.json").read_text())["mlflow_run_id"] == source_run.info.run_id

    diff = report(["--diff", str(source), str(target)], cwd)
    assert re.search(r"^dataset\.scorer\.name\s+exact_match\s+contains$", diff.stdout, re.MULTILINE)
    assert "plan.json: the same" in diff.stdout


def test_mistakes_are_one_line_and_exit_2(sweep, tmp_path):
    cwd, sweep_dir = sweep
    cases = [
        (["pipeline.from_transcript=no/such/run", "tracking=none"], "error: pipeline.from_transcript=no/such/run: "
                                                                    "no such folder"),
        ([f"pipeline.from_transcript={sweep_dir}", "tracking=none"], "is a sweep folder, not a run folder: give one "
                                                                     "of its jobs' folders"),
        ([f"pipeline.from_transcript={sweep_dir / '0'}", "generation.seed=3", "tracking=none"],
         "error: generation.seed=3: pipeline.from_transcript re-scores an existing transcript"),
    ]
    for args, message in cases:
        result = run_pipeline(args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1], result.stderr
        assert "Traceback" not in result.stderr

    # bad scorer settings are refused before anything is created (each setting: tests/test_scoring.py)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = run_pipeline(["dataset.scorer.name=regex", "dataset.scorer.pattern='(x'"], cwd=fresh)
    assert result.returncode == 2 and result.stderr.strip().startswith(
        "config error: dataset.scorer.pattern='(x' is not allowed: expected a valid regular expression")
    assert len(result.stderr.strip().splitlines()) == 1 and not (fresh / "runs").exists()

    # a user scorer that does not import: refused while planning, before weights load
    result = run_pipeline(["dataset.scorer._target_=my_missing_module.judge", "tracking=none",
                           "hydra.run.dir=bad_scorer"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("error: dataset.scorer._target_=my_missing_module.judge: cannot "
                                                      "import my_missing_module; the module must be importable from "
                                                      "the launch folder or an installed package")
    assert not (tmp_path / "bad_scorer").exists()  # refused while planning: nothing created, nothing loaded

    for args in (["--diff", str(sweep_dir), str(tmp_path)], [str(tmp_path / "bad_scorer" / "nothing")]):
        result = report(args, cwd)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and not result.stdout
        assert result.stderr.startswith("error: ")
