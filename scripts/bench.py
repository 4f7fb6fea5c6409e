"""Benchmarks, each measured against a baseline in the same run: `make bench` (or `--quick`).

plan: wall time of `python -m pipeline pipeline.until=plan` on the demo model (the issue's target:
under 2 s), against the least a transformers-based planner pays to count the same prompts
(import transformers, load the tokenizer, apply the chat template) and against a bare interpreter.
traces (--traces): the 200-sample demo run tracked in MLflow, with `tracking.traces=true` against
the same run with `tracking.traces=false`, alternated: the execute stage's seconds (traces are
built from the transcript afterwards, so the issue's bound is execute +5%), the seconds spent
logging the 200 traces (the run's `traces/seconds` metric) and the whole command's wall time.
Prints a table and writes the figures as JSON (default runs/bench/bench-<time>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAN_TARGET_S = 2.0
TRANSFORMERS_PLANNER = """
import json
from transformers import AutoTokenizer
from pipeline.config import ASSETS_DIR
tokenizer = AutoTokenizer.from_pretrained(ASSETS_DIR / "demo_model", local_files_only=True)
lines = (ASSETS_DIR / "datasets" / "addition.jsonl").read_text().splitlines()
longest = max(len(tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": json.loads(l)["prompt"]}],
              add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]) for l in lines)
"""


def wall_times(command: list[str], repeats: int, cwd: Path) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_RUN_TOKEN", "MLFLOW_"))}
    env["HF_HUB_OFFLINE"] = "1"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def bench_plan(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        python = [sys.executable]
        ours = wall_times(python + ["-m", "pipeline", "pipeline.until=plan", "tracking=none",
                                    f"hydra.run.dir={cwd / 'plan'}"], repeats, cwd)
        baseline = wall_times(python + ["-c", TRANSFORMERS_PLANNER], repeats, cwd)
        interpreter = wall_times(python + ["-c", "pass"], repeats, cwd)
    median = {name: statistics.median(times) for name, times in
              (("ours", ours), ("transformers_tokenizer", baseline), ("interpreter", interpreter))}
    return {
        "target_s": PLAN_TARGET_S,
        "median_s": median,
        "runs_s": {"ours": ours, "transformers_tokenizer": baseline, "interpreter": interpreter},
        "ratio_ours_to_transformers_tokenizer": median["ours"] / median["transformers_tokenizer"],
        "meets_target": median["ours"] < PLAN_TARGET_S,
    }


def bench_traces(repeats: int) -> dict:
    """Median execute seconds, trace-logging seconds and wall seconds, with traces and without."""
    from mlflow.tracking import MlflowClient

    figures: dict[str, dict[str, list[float]]] = {"traces": {}, "no_traces": {}}
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        for index in range(repeats):
            for name, flag in (("traces", "true"), ("no_traces", "false")):
                run_dir = cwd / f"{name}-{index}"
                (wall,) = wall_times([sys.executable, "-m", "pipeline", f"tracking.traces={flag}",
                                      f"hydra.run.dir={run_dir}"], 1, cwd)
                summary = json.loads((run_dir / "summary.json").read_text())
                client = MlflowClient(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")
                (run,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id],
                                            filter_string=f"tags.run_dir = '{run_dir}'")
                for key, value in (("execute_s", summary["stage_seconds"]["execute"]), ("wall_s", wall),
                                   ("trace_logging_s", run.data.metrics.get("traces/seconds", 0.0))):
                    figures[name].setdefault(key, []).append(value)
    median = {name: {key: statistics.median(values) for key, values in runs.items()} for name, runs in figures.items()}
    with_traces, without = median["traces"], median["no_traces"]
    return {
        "samples": 200,
        "median": median,
        "runs": figures,
        "ratio_execute_traces_to_no_traces": with_traces["execute_s"] / without["execute_s"],
        "ratio_trace_logging_to_execute": with_traces["trace_logging_s"] / without["execute_s"],
        "ratio_wall_traces_to_no_traces": with_traces["wall_s"] / without["wall_s"],
    }


def print_traces(figures: dict, repeats: int) -> None:
    with_traces, without = figures["median"]["traces"], figures["median"]["no_traces"]
    print(f"traces (200-sample demo run tracked in MLflow, median of {repeats} each, alternated):")
    print(f"  execute stage   {with_traces['execute_s']:.3f} s with traces, {without['execute_s']:.3f} s without "
          f"(ratio {figures['ratio_execute_traces_to_no_traces']:.2f}; bound 1.05)")
    print(f"  trace logging   {with_traces['trace_logging_s']:.3f} s after execute "
          f"({figures['ratio_trace_logging_to_execute']:.2f} x the execute stage)")
    print(f"  whole command   {with_traces['wall_s']:.2f} s with traces, {without['wall_s']:.2f} s without "
          f"(ratio {figures['ratio_wall_traces_to_no_traces']:.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (for the test suite)")
    parser.add_argument("--out", type=Path, help="JSON file to write (default runs/bench/bench-<time>.json)")
    parser.add_argument("--traces", action="store_true", help="also measure MLflow trace logging (2 x repeats demo runs)")
    parser.add_argument("--repeats", type=int, help="repeats of each measurement (default 7, 1 with --quick)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 7)
    results = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
               "repeats": repeats, "plan": bench_plan(repeats)}
    plan = results["plan"]
    print(f"plan (pipeline.until=plan on the demo model, median of {repeats}):")
    print(f"  ours                          {plan['median_s']['ours']:.2f} s   (target < {PLAN_TARGET_S:.0f} s: "
          f"{'met' if plan['meets_target'] else 'MISSED'})")
    print(f"  transformers tokenizer only   {plan['median_s']['transformers_tokenizer']:.2f} s   "
          f"(ratio ours/this {plan['ratio_ours_to_transformers_tokenizer']:.2f})")
    print(f"  bare interpreter              {plan['median_s']['interpreter']:.2f} s")
    if args.traces:
        results["traces"] = bench_traces(repeats)
        print_traces(results["traces"], repeats)
    out = args.out or ROOT / "runs" / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
