"""bench.py's sections on the run around the model: start-up, per sample, under contention.

startup: wall and CPU seconds of `python -m pipeline` as a user types it, on the demo model, against
baselines taken in the same run (a bare interpreter, `import torch`, `import mlflow`): a config
mistake refused, `pipeline.until=plan`, and the whole demo run with tracking off and on (a warm
store: one run creates it first). The tracked run is broken down into the interpreter, our
imports, compose and checks, each stage (summary.json), tracking (MLflow's import, store, run,
traces and assessments: the difference to the untracked run) and the rest; the load stage into
importing torch, importing transformers, the tokenizer and the model (timed in a child process).

per_sample: scripts/bench_runner.py in a fresh process per figure: N samples answered by the fake
backend (zero model time), tracking off and on; milliseconds per sample and peak RSS, and the RSS
growth per sample between a run of N/10 and one of N (against the transcript's bytes per sample).

contention: the demo run (tracking off) alone, then with a CPU-bound process beside it (one per
core this process may use, minus one: a second process on a 2-core machine), and the same with
OpenMP's spin-waiting as it was before runtime.threads (OMP_WAIT_POLICY unset): wall time and the
ratio to the idle run.

CPU seconds (user + system of the child) are what an idle machine's wall time would be for work
that runs on one core; on a busy machine wall times grow and ratios within one run still compare.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TARGETS_S = {"run_tracked": 5.0, "plan": 1.0, "mistake": 0.5}  # the issue's, on 2 idle cores
PER_SAMPLE_TARGETS_MS = {"off": 0.2, "on": 2.0}
CONTENTION_TARGET_RATIO = 2.5
LOAD_PARTS = """
import json, sys, time
parts, started = {}, time.perf_counter()
def mark(name):
    global started
    now = time.perf_counter(); parts[name] = now - started; started = now
import torch; mark("import_torch")
import transformers; mark("import_transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer; mark("import_auto_classes")
from pipeline.core.config import ASSETS_DIR
AutoTokenizer.from_pretrained(ASSETS_DIR / "demo_model", local_files_only=True); mark("tokenizer")
AutoModelForCausalLM.from_pretrained(ASSETS_DIR / "demo_model", local_files_only=True); mark("model")
print(json.dumps(parts))
"""


def env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_RUN_TOKEN", "MLFLOW_", "HYDRA_"))}
    values["HF_HUB_OFFLINE"] = "1"
    values["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), values.get("PYTHONPATH")]))
    return {**values, **(extra or {})}


def timed(command: list[str], cwd: Path, extra_env: Optional[dict[str, str]] = None,
          check: bool = True) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child, the finished process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=cwd, env=env(extra_env), capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {finished.returncode}: {finished.stderr[-800:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), finished


def median_of(command: list[str], cwd: Path, repeats: int, check: bool = True) -> dict:
    runs = [timed(command, cwd, check=check)[:2] for _ in range(repeats)]
    return {"wall_s": statistics.median(w for w, _ in runs), "cpu_s": statistics.median(c for _, c in runs),
            "runs_wall_s": [w for w, _ in runs]}


def pipeline_run(cwd: Path, args: list[str], name: str, extra_env: Optional[dict[str, str]] = None) -> dict:
    """One `python -m pipeline` run into runs/<name>: wall, CPU and its summary's stage seconds."""
    wall, cpu, _ = timed([sys.executable, "-m", "pipeline", *args, f"hydra.run.dir=runs/{name}"], cwd, extra_env)
    summary = json.loads((cwd / "runs" / name / "summary.json").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "stage_seconds": summary["stage_seconds"]}


def bench_startup(repeats: int, limit: Optional[int] = None) -> dict:
    python = sys.executable
    data = [f"dataset.limit={limit}"] if limit else []
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        baselines = {name: median_of([python, "-c", code], cwd, repeats) for name, code in (
            ("interpreter", "pass"), ("import_torch", "import torch"), ("import_mlflow", "import mlflow"),
            ("import_pipeline_main", "import pipeline.__main__"))}
        ours = {
            "mistake": median_of([python, "-m", "pipeline", "generation.top_p=1.5"], cwd, repeats, check=False),
            "plan": median_of([python, "-m", "pipeline", "pipeline.until=plan", "tracking=none",
                               "hydra.run.dir=runs/plan/${now:%H-%M-%S-%f}"], cwd, repeats),
        }
        pipeline_run(cwd, data + ["tracking.traces=false"], "warm-up")  # creates the MLflow store (its migrations)
        untracked, tracked = [], []
        for index in range(repeats):  # in turn, so a drift in the machine's speed falls on both
            untracked.append(pipeline_run(cwd, data + ["tracking=none"], f"off-{index}"))
            tracked.append(pipeline_run(cwd, data, f"on-{index}"))
        load_parts = json.loads(timed([python, "-c", LOAD_PARTS], cwd)[2].stdout.strip().splitlines()[-1])
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("pipeline").experiment_id
        metrics = [client.search_runs([experiment], filter_string=f"tags.run_dir = '{cwd / 'runs' / f'on-{i}'}'")[0]
                   .data.metrics for i in range(repeats)]
    ours["run_untracked"] = _median_run(untracked)
    ours["run_tracked"] = _median_run(tracked)
    run = ours["run_tracked"]
    stages = run["stage_seconds"]
    interpreter = baselines["interpreter"]["wall_s"]
    imports = baselines["import_pipeline_main"]["wall_s"] - interpreter
    compose = max(0.0, ours["plan"]["wall_s"] - baselines["import_pipeline_main"]["wall_s"]
                  - ours["run_untracked"]["stage_seconds"]["resolve"] - ours["run_untracked"]["stage_seconds"]["plan"])
    tracking = run["wall_s"] - ours["run_untracked"]["wall_s"]
    breakdown = {"interpreter": interpreter, "imports": imports, "compose_and_checks": compose,
                 **{f"stage/{name}": seconds for name, seconds in stages.items()},
                 "tracking": tracking,
                 "tracking/traces": statistics.median(m.get("traces/seconds", 0.0) for m in metrics),
                 "tracking/assessments": statistics.median(m.get("assessments/seconds", 0.0) for m in metrics)}
    breakdown["rest"] = run["wall_s"] - interpreter - imports - compose - sum(stages.values()) - tracking
    return {
        "baselines": baselines, "ours": ours, "breakdown_tracked_run_s": breakdown, "load_parts_s": load_parts,
        "samples": limit or 200, "targets_s": STARTUP_TARGETS_S,
        "outside_model_compute_s": run["wall_s"] - stages["execute"],
        "ratios": {"plan_to_interpreter": ours["plan"]["wall_s"] / interpreter,
                   "plan_to_import_torch": ours["plan"]["wall_s"] / baselines["import_torch"]["wall_s"],
                   "mistake_to_interpreter": ours["mistake"]["wall_s"] / interpreter,
                   "tracked_to_untracked": run["wall_s"] / ours["run_untracked"]["wall_s"]},
    }


def _median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def bench_per_sample(samples: int, scratch: Path) -> dict:
    figures = {}
    store = scratch / "per-sample-mlflow.db"
    for name, count, tracking in (("store", 10, "on"), ("off_small", max(1, samples // 10), "off"),
                                  ("off", samples, "off"), ("on", samples, "on")):  # the first creates the store
        folder, out = scratch / f"per-sample-{name}", scratch / f"per-sample-{name}.json"
        timed([sys.executable, str(ROOT / "scripts" / "bench_runner.py"), "--samples", str(count),
               "--tracking", tracking, "--folder", str(folder), "--store", str(store), "--out", str(out)], scratch)
        figures[name] = json.loads(out.read_text())
        figures[name]["transcript_bytes"] = (folder / "run" / "transcript.jsonl").stat().st_size
    small, large = figures["off_small"], figures["off"]
    figures["rss_growth_bytes_per_sample"] = 1024 * (large["peak_rss_kib"] - small["peak_rss_kib"]) / (
        large["samples"] - small["samples"]) if large["samples"] > small["samples"] else 0.0
    figures["transcript_bytes_per_sample"] = large["transcript_bytes"] / large["samples"]
    figures["targets_ms"] = PER_SAMPLE_TARGETS_MS
    return figures


def bench_contention(repeats: int, limit: Optional[int] = None) -> dict:
    """The demo run alone and beside CPU-bound processes; ours, and with OpenMP spinning as before."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    burners_count = max(1, cores - 1)
    args = ["tracking=none"] + ([f"dataset.limit={limit}"] if limit else [])
    figures: dict = {"burners": burners_count, "cores": cores, "runs": {}}
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        settings = {"ours": None, "omp_spinning_as_before": {"OMP_WAIT_POLICY": ""}}
        for index in range(repeats):
            for loaded in (False, True):
                burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in
                           range(burners_count if loaded else 0)]
                try:
                    for name, extra in settings.items():
                        key = f"{name}/{'loaded' if loaded else 'idle'}"
                        figures["runs"].setdefault(key, []).append(
                            pipeline_run(cwd, args, f"{key.replace('/', '-')}-{index}", extra))
                finally:
                    for burner in burners:
                        burner.kill()
                        burner.wait()
    medians = {key: _median_run(runs) for key, runs in figures["runs"].items()}
    figures["median"] = medians
    for name in ("ours", "omp_spinning_as_before"):
        idle, loaded = medians[f"{name}/idle"], medians[f"{name}/loaded"]
        figures[f"{name}_ratio_wall"] = loaded["wall_s"] / idle["wall_s"]
        figures[f"{name}_ratio_execute"] = loaded["stage_seconds"]["execute"] / idle["stage_seconds"]["execute"]
        figures[f"{name}_ratio_load"] = loaded["stage_seconds"]["load"] / idle["stage_seconds"]["load"]
    figures["target_ratio"] = CONTENTION_TARGET_RATIO
    return figures


def print_startup(figures: dict) -> None:
    base, ours, parts = figures["baselines"], figures["ours"], figures["breakdown_tracked_run_s"]
    print(f"\nstart-up (demo model, {figures['samples']} samples; median wall s, CPU s in brackets):")
    for name, label in (("interpreter", "python -c pass"), ("import_torch", "python -c 'import torch'"),
                        ("import_mlflow", "python -c 'import mlflow'"),
                        ("import_pipeline_main", "import pipeline.__main__")):
        print(f"  {label:<34} {base[name]['wall_s']:6.2f} s  [{base[name]['cpu_s']:.2f}]")
    targets = figures["targets_s"]
    for name, label in (("mistake", "a config mistake refused"), ("plan", "pipeline.until=plan"),
                        ("run_untracked", "whole run, tracking=none"), ("run_tracked", "whole run, tracked (warm)")):
        target = f"   (goal {targets[name]} s on 2 idle cores)" if name in targets else ""
        print(f"  {label:<34} {ours[name]['wall_s']:6.2f} s  [{ours[name]['cpu_s']:.2f}]{target}")
    print(f"  tracked run outside the model's compute (wall - execute): {figures['outside_model_compute_s']:.2f} s; "
          f"ratios: plan/interpreter {figures['ratios']['plan_to_interpreter']:.1f}, plan/import torch "
          f"{figures['ratios']['plan_to_import_torch']:.2f}, tracked/untracked {figures['ratios']['tracked_to_untracked']:.2f}")
    print("  tracked run, where its wall time goes: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    print("  load stage, step by step in a child process: " + ", ".join(
        f"{k} {v:.2f}" for k, v in figures["load_parts_s"].items()))


def print_per_sample(figures: dict) -> None:
    print(f"\nper sample (fake backend, zero model time; {figures['off']['samples']} samples):")
    for name in ("off", "on"):
        run = figures[name]
        extra = (" traces {traces:.0f} in {t:.1f} s, assessments {a:.0f} in {s:.1f} s".format(
            traces=run["tracking_metrics"].get("traces", 0), t=run["tracking_metrics"].get("traces/seconds", 0),
            a=run["tracking_metrics"].get("assessments", 0), s=run["tracking_metrics"].get("assessments/seconds", 0))
            if run.get("tracking_metrics") else "")
        print(f"  tracking {name:<4} {run['ms_per_sample']:.3f} ms/sample wall, {1000 * run['cpu_s'] / run['samples']:.3f} "
              f"CPU (goal {figures['targets_ms'][name]} ms); stages " + ", ".join(
                  f"{k} {v:.2f}" for k, v in run["stage_seconds"].items()) + extra)
    print(f"  memory: peak RSS {figures['off']['peak_rss_kib'] / 1024:.0f} MiB at {figures['off']['samples']} samples, "
          f"{figures['off_small']['peak_rss_kib'] / 1024:.0f} MiB at {figures['off_small']['samples']}: "
          f"{figures['rss_growth_bytes_per_sample']:.0f} bytes a sample (the transcript: "
          f"{figures['transcript_bytes_per_sample']:.0f} bytes a sample)")


def print_contention(figures: dict) -> None:
    print(f"\ncontention (demo run, tracking off; {figures['burners']} CPU-bound process(es) beside it on "
          f"{figures['cores']} core(s)):")
    for name, label in (("ours", "ours"), ("omp_spinning_as_before", "OMP_WAIT_POLICY unset (before)")):
        idle, loaded = figures["median"][f"{name}/idle"], figures["median"][f"{name}/loaded"]
        print(f"  {label:<32} idle {idle['wall_s']:6.2f} s, loaded {loaded['wall_s']:6.2f} s: ratio "
              f"{figures[f'{name}_ratio_wall']:.2f} (goal <= {figures['target_ratio']}); execute "
              f"{idle['stage_seconds']['execute']:.2f} -> {loaded['stage_seconds']['execute']:.2f} s, load "
              f"{idle['stage_seconds']['load']:.2f} -> {loaded['stage_seconds']['load']:.2f} s")
