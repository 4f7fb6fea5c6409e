"""The backend registry (pipeline.backends.registry): every kind loads without its libraries, and a new kind is
one module, one line in KINDS and one conf file, run through the real entry point with nothing above
pipeline/backends/ edited; its settings are checked, and runtime.* keys it does not read are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.backends import registry
from tests.conftest import pipeline_env

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "vllm", "httpx", "openai")


def test_every_kind_describes_itself_without_importing_its_libraries():
    code = ("import sys, json\nfrom pipeline.backends import registry\n"
            "kinds = {n: registry.kind(n).describe for n in registry.names()}\n"
            f"print(json.dumps([kinds, sorted(m for m in {HEAVY!r} if m in sys.modules)]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=pipeline_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    kinds, imported = json.loads(result.stdout)
    assert set(kinds) == set(registry.names()) >= {"transformers", "openai", "vllm"}
    assert imported == []


def run_with_scripted_kind(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """`python -m pipeline` as it is, with one entry added to the registry and conf/backend/scripted.yaml beside."""
    conf = tmp_path / "conf" / "backend"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "scripted.yaml").write_text("name: scripted\nwrong_by: 0\n")
    code = ("import sys\nfrom pipeline.backends import registry\n"
            "registry.KINDS['scripted'] = 'tests.helpers.scripted_kind'\n"
            "from pipeline.__main__ import entry\n"
            f"sys.argv = ['pipeline', '--config-dir', {str(tmp_path / 'conf')!r}, *{overrides!r}]\nentry()\n")
    env = {**pipeline_env(), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


def test_a_kind_added_in_one_line_runs_through_the_entry_point(tmp_path):
    base = ["backend=scripted", "runtime.model=calculator", "tracking=none", "dataset.limit=6"]
    right = run_with_scripted_kind(tmp_path, base + ["hydra.run.dir=runs/right"])
    assert right.returncode == 0, right.stderr
    summary = json.loads((tmp_path / "runs/right/summary.json").read_text())
    assert summary["num_samples"] == 6 and summary["accuracy"] == 1.0
    plan = json.loads((tmp_path / "runs/right/plan.json").read_text())
    assert plan["backend"] == "scripted" and plan["backend_plan"]["options"][0]["value"] == 0
    assert "scorer exact_match is ready for every reference in the dataset" in plan["checks"]  # the neutral part

    wrong = run_with_scripted_kind(tmp_path, base + ["backend.wrong_by=1", "hydra.run.dir=runs/wrong"])
    assert wrong.returncode == 0, wrong.stderr
    assert json.loads((tmp_path / "runs/wrong/summary.json").read_text())["accuracy"] == 0.0


def test_a_new_kinds_settings_and_runtime_keys_are_checked_before_anything_runs(tmp_path):
    for overrides, line in [
        (["backend.wrong_by=lots"], "backend.wrong_by='lots' is not allowed: expected a whole number"),
        (["+backend.base_url=http://h:1/v1"], "backend.base_url is a setting of backend=openai, not backend=scripted"),
        (["runtime.device=cpu"], "runtime.device=cpu is a setting of backend=transformers, not backend=scripted"),
    ]:
        result = run_with_scripted_kind(tmp_path, ["backend=scripted", "tracking=none", *overrides])
        assert result.returncode == 2, result.stderr
        assert line in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "runs").exists()
