"""The benchmark script runs and writes its figures (they are reported, not asserted: speed is not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.backends.openai.local_server import serving_extra_missing
from tests.conftest import mlflow_client, pipeline_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_quick_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    # an interpreter without lm-eval (no venv with it here): the server part says why it has no lm-eval figures
    no_lm_eval = tmp_path / "python-without-lm-eval"
    no_lm_eval.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'lm_eval'\" >&2\nexit 1\n")
    no_lm_eval.chmod(0o755)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(out),
                             "--lm-eval", str(no_lm_eval),
                             # the multiple-choice comparison needs lm-eval for its baseline (not installed here);
                             # without it, it spent half this test's time on a figure it could not take
                             "--skip", "choices",
                             # the run around the model: its per-sample part is checked below, the start-up
                             # and contention parts are whole demo runs (minutes of the suite for no assertion)
                             "startup", "contention", "per-sample",
                             # three vLLM engines and lm-eval's: minutes; run by hand (docs/benchmarks.md)
                             "vllm"],
                            cwd=tmp_path, env=pipeline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    plan = figures["plan"]
    assert set(plan["median_s"]) == {"ours", "transformers_tokenizer", "interpreter"}
    assert all(seconds > 0 for seconds in plan["median_s"].values())
    assert plan["ratio_ours_to_transformers_tokenizer"] == pytest.approx(
        plan["median_s"]["ours"] / plan["median_s"]["transformers_tokenizer"])

    demo, larger = figures["execute"]
    for entry in (demo, larger):
        assert entry["plain_loop"]["tokens"] == entry["ours"]["tokens"] > 0  # the same greedy work on both sides
        assert entry["ratio_ours_to_plain"] == pytest.approx(
            entry["ours"]["tokens_per_second"] / entry["plain_loop"]["tokens_per_second"])
        assert entry["best"][0]["settings"] == "runtime.batch_size=auto"
    assert larger["parameters"] > demo["parameters"]

    server = figures["server"]
    if serving_extra_missing() is None:
        assert server["plain_asyncio"]["tokens"] == server["ours"]["tokens"] > 0  # the same greedy answers
        assert server["plain_asyncio_unstreamed"]["tokens"] == server["ours"]["tokens"]
        assert server["prompts"] == 8 and server["concurrency"] == 8 and server["temperature"] == 0.0
        assert server["ratio_ours_to_plain"] == pytest.approx(
            server["ours"]["tokens_per_second"] / server["plain_asyncio"]["tokens_per_second"])
        assert "No module named 'lm_eval'" in server["lm_eval"]["error"]
        assert "(b) our OpenAIBackend.generate" in result.stdout
        assert "(c) lm-eval local-chat-completions: failed" in result.stdout
    else:
        assert server == {"skipped": serving_extra_missing()}

    sweep = figures["sweep"]
    assert sweep["reuse"]["weights_loads"] == 1 and sweep["no_reuse"]["weights_loads"] == sweep["no_reuse"]["jobs"] == 2
    assert sweep["reuse"]["one_load_plus_executes_s"] == pytest.approx(
        sweep["reuse"]["load_s"][0] + sum(sweep["reuse"]["execute_s"]))
    cache = figures["cache"]
    assert cache["first"]["cache_hits"] == 0 and cache["second"]["cache_hits"] == cache["second"]["samples"] == 16
    assert cache["ratio_second_to_first_wall"] == pytest.approx(cache["second"]["wall_s"] / cache["first"]["wall_s"])
    for line in ("ratio ours/this", "ratio (b)/(a)", "(c) ours, runtime.batch_size=auto", "reuse is",
                 "ratio second/first"):
        assert line in result.stdout

    client = mlflow_client(tmp_path)  # the figures are an MLflow run too
    (run,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert run.data.metrics["demo/ratio_ours_to_plain"] == pytest.approx(demo["ratio_ours_to_plain"])
    if serving_extra_missing() is None:
        assert run.data.metrics["server/ratio_ours_to_plain"] == pytest.approx(server["ratio_ours_to_plain"])


@pytest.mark.slow
def test_bench_per_sample_runs_the_real_runner_over_the_fake_backend(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--only", "per-sample", "--samples",
                             "300", "--tracking", "off", "--out", str(out)],
                            cwd=tmp_path, env=pipeline_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())["per_sample"]
    assert figures["off"]["samples"] == figures["on"]["samples"] == 300 and figures["off_small"]["samples"] == 30
    assert figures["off"]["accuracy"] == 0.0  # the fake backend echoes the question: every answer scored, all wrong
    assert set(figures["off"]["stage_seconds"]) == {"resolve", "plan", "load", "execute", "score", "summarize"}
    assert figures["on"]["tracking_metrics"]["traces"] == 300  # under tracking.trace_sample's 1000: every answer
    assert figures["off"]["ms_per_sample"] == pytest.approx(1000 * figures["off"]["wall_s"] / 300)
    assert "per sample (fake backend" in result.stdout
