"""The benchmark script runs and writes its figures (they are reported, not asserted: speed is not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import pipeline_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_quick_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(out)],
                            cwd=tmp_path, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())["plan"]
    assert set(figures["median_s"]) == {"ours", "transformers_tokenizer", "interpreter"}
    assert all(seconds > 0 for seconds in figures["median_s"].values())
    assert figures["ratio_ours_to_transformers_tokenizer"] == pytest.approx(
        figures["median_s"]["ours"] / figures["median_s"]["transformers_tokenizer"])
    assert "ratio ours/this" in result.stdout
