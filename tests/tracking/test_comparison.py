"""A sweep's comparison table and plots, from job folders written here (no model runs)."""

from __future__ import annotations

import csv

import pytest

from pipeline.core.files import write_json
from pipeline.tracking.comparison import comparison_rows, swept_values, write_comparison
from pipeline.tracking.plot_process import PlotProcesses
from pipeline.tracking.sweep import sweep_name, swept_keys

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def job(tmp_path, num: int, overrides: list[str], summary: dict | None, state: str = "success") -> dict:
    folder = tmp_path / str(num)
    folder.mkdir()
    if summary is not None:
        write_json(folder / "summary.json", summary)
    return {"num": num, "dir": str(folder), "overrides": overrides, "state": state}


@pytest.fixture
def jobs(tmp_path):
    return [
        job(tmp_path, 0, ["generation.temperature=0", "generation.seed=1"],
            {"accuracy": 1.0, "accuracy_ci_low": 0.98, "accuracy_ci_high": 1.0, "tokens_per_second": 2000.0,
             "pass_at_k": {"1": 1.0, "2": 1.0}}),
        job(tmp_path, 1, ["generation.temperature=1.5", "generation.seed=1"],
            {"accuracy": 0.1, "accuracy_ci_low": 0.06, "accuracy_ci_high": 0.15, "tokens_per_second": 1800.0,
             "pass_at_k": {"1": 0.1, "2": 0.2}}),
        job(tmp_path, 2, ["generation.temperature=0", "generation.seed=2"],
            {"accuracy": 0.99, "accuracy_ci_low": 0.96, "accuracy_ci_high": 1.0, "tokens_per_second": 2100.0}),
        job(tmp_path, 3, ["generation.temperature=1.5", "generation.seed=2"], None, state="failed"),
    ]


def test_rows_hold_swept_values_state_and_summary_metrics(jobs):
    rows = comparison_rows(jobs, ["generation.temperature", "generation.seed"])
    assert rows[1]["generation.temperature"] == "1.5" and rows[1]["generation.seed"] == "1"
    assert rows[1]["accuracy"] == 0.1 and rows[1]["accuracy_ci_high"] == 0.15 and rows[1]["pass_at_2"] == 0.2
    assert rows[3]["state"] == "failed" and rows[3]["accuracy"] is None
    assert "pass_at_1" not in rows[2]  # an older summary without pass@k


def test_table_and_plots_are_written(tmp_path, jobs):
    swept = ["generation.temperature", "generation.seed"]
    comparison = write_comparison(tmp_path, jobs, swept)
    rows = list(csv.DictReader(comparison.csv.open()))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[0]["accuracy_ci_low"] == "0.98" and rows[3]["accuracy"] == ""
    assert list(rows[0])[:4] == ["job", "generation.temperature", "generation.seed", "state"]
    markdown = comparison.markdown.read_text().splitlines()
    assert markdown[0].startswith("| job | generation.temperature | generation.seed | state | accuracy (95% CI) |")
    assert "| 1 | 1.5 | 1 | success | 0.100 [0.060, 0.150] |" in markdown[3]
    names = sorted(p.name for p in comparison.plots)
    assert "accuracy_vs_generation.temperature.png" in names and "pass_at_2_vs_generation.seed.png" in names
    assert len(names) == 4 * 2  # accuracy, pass_at_1, pass_at_2, tokens_per_second against both keys
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in comparison.plots)


def test_text_values_are_plotted_as_categories_and_a_sweep_of_failures_plots_nothing(tmp_path):
    jobs = [job(tmp_path, 0, ["session=default"], {"accuracy": 0.0}),
            job(tmp_path, 1, ["session=calculator_tools"], {"accuracy": 1.0})]
    assert [p.name for p in write_comparison(tmp_path, jobs, ["session"]).plots] == ["accuracy_vs_session.png"]
    failed = [job(tmp_path, 2, ["session=x"], None, state="failed")]
    comparison = write_comparison(tmp_path / "2", failed, ["session"])
    assert comparison.plots == [] and "| 2 | x | failed |" in comparison.markdown.read_text()


def test_swept_values_mask_secrets():
    assert swept_values(["+runtime.hf_token=hf_SECRET", "tracking.uri=http://u:pw@host"],
                        ["runtime.hf_token", "tracking.uri"]) == {"runtime.hf_token": "***",
                                                                  "tracking.uri": "http://***@host"}


def test_the_parent_run_is_named_after_the_swept_keys_and_the_experiment():
    overrides = ["generation.temperature=0,0.7", "generation.seed=range(1,3)", "dataset.limit=5"]
    assert swept_keys(overrides, {}) == ["generation.temperature", "generation.seed"]
    assert sweep_name(overrides, swept_keys(overrides, {})) == "sweep generation.temperature, generation.seed"
    saved = ["+experiment=temperature_sweep"]
    swept = swept_keys(saved, {"generation.temperature": "0.0,0.7,1.5"})
    assert sweep_name(saved, swept) == "sweep temperature_sweep: generation.temperature"


def test_plot_processes_draw_what_this_process_would(tmp_path, jobs):
    swept = ["generation.temperature", "generation.seed"]
    here = write_comparison(tmp_path / "here", jobs, swept)
    plots = PlotProcesses(count=3)
    there = write_comparison(tmp_path / "there", jobs, swept, draw=plots.write_plots)
    assert [p.name for p in there.plots] == [p.name for p in here.plots] and len(there.plots) == 8
    assert all(p.parent == tmp_path / "there" / "comparison" / "plots" for p in there.plots)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in there.plots)
    assert [process.wait(timeout=30) for process in plots.processes] == [0, 0, 0]  # each ends once it answered


def test_a_plot_process_that_died_has_its_share_drawn_here(tmp_path, jobs):
    plots = PlotProcesses(count=2)
    plots.processes[0].kill()
    plots.processes[0].wait(timeout=30)
    comparison = write_comparison(tmp_path, jobs, ["generation.seed"], draw=plots.write_plots)
    assert [p.name for p in comparison.plots] == [
        "accuracy_vs_generation.seed.png", "pass_at_1_vs_generation.seed.png", "pass_at_2_vs_generation.seed.png",
        "tokens_per_second_vs_generation.seed.png"]
