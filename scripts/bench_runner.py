"""The runner's own cost per sample: the real runner over N samples answered by the fake backend.

`python scripts/bench_runner.py --samples N --tracking off|on --out FILE` runs pipeline.run.runner.run
in this process over a generated dataset of N sums, with the plan stage swapped for one that hands
back pipeline.backends.fake.FakeBackend (zero model time: it echoes at once). Everything else is the
run as a user gets it: resolve, the input digests, rendering the chat template's messages, the
transcript written and fsynced batch by batch, scoring and its journal, the summary, and with
tracking on the MLflow run, its params, one trace per answer and each trace's assessments. The
seconds of each stage, the wall time, peak RSS and (with tracking) the seconds spent on traces and
assessments go to FILE as JSON. bench.py runs it in a fresh process per figure (peak RSS is per process),
against a store made beforehand (`--store`): a new store's migrations are a cost of its first run, not a sample's.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BATCH_SIZE = 16  # the demo's runtime.batch_size: one transcript write and fsync per batch, as there


def write_dataset(path: Path, samples: int) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for index in range(samples):
            a, b = index % 97, index // 97 % 89
            file.write(json.dumps({"id": f"s{index}", "prompt": f"What is {a}+{b}?", "reference": str(a + b)}) + "\n")
    return path


def fake_plan(config, resolved, run_dir, overrides):
    """The plan stage's result for the fake backend: the samples, a plan of the runtime's shape, the backend."""
    from pipeline.backends.fake import FakeBackend
    from pipeline.core.records import RuntimePlan
    from pipeline.data.dataset import load_samples

    samples = load_samples(config.dataset, False)
    plan = RuntimePlan(model=resolved, backend="fake", device="cpu", dtype="none", batch_size=BATCH_SIZE, memory=None,
                       reasons={},
                       num_samples=len(samples), longest_prompt_tokens=0, longest_prompt_sample="",
                       max_new_tokens=config.generation.max_new_tokens, context_length=0,
                       truncation=config.session.truncation, truncated_samples=[], generation={}, generation_sources={})
    return plan, samples, FakeBackend(batch_size=BATCH_SIZE)


def peak_rss_kib() -> int:
    """This process's peak RSS (VmHWM: getrusage's ru_maxrss keeps the parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(samples: int, tracking: bool, folder: Path, trace_sample: int | None = None,
            store: Path | None = None) -> dict:
    from hydra import compose, initialize_config_dir

    from pipeline.core.config import CONF_DIR, register, to_config
    from pipeline.run import runner

    folder.mkdir(parents=True, exist_ok=True)
    data = write_dataset(folder / "sums.jsonl", samples)
    store = store or folder / "mlflow.db"
    overrides = [f"dataset.path={data}", "dataset.name=sums", f"tracking.uri=sqlite:///{store}",
                 *([] if tracking else ["tracking=none"]),
                 *([f"tracking.trace_sample={trace_sample}"] if trace_sample is not None else [])]
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = to_config(compose(config_name="config", overrides=overrides))
    runner.plan = fake_plan  # the one stage swapped: the runner calls what its module names
    before = peak_rss_kib()
    started, cpu = time.perf_counter(), time.process_time()
    result = runner.run(config, folder / "run", overrides=tuple(overrides))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    summary = json.loads((folder / "run" / "summary.json").read_text())
    figures = {"samples": samples, "tracking": tracking, "wall_s": wall, "cpu_s": cpu,
               "ms_per_sample": 1000 * wall / samples, "stage_seconds": summary["stage_seconds"],
               "accuracy": summary["accuracy"], "peak_rss_kib": peak_rss_kib(),
               "rss_kib_before_run": before}
    if tracking and result.tracker is not None:
        from mlflow.tracking import MlflowClient

        metrics = MlflowClient(f"sqlite:///{store}").get_run(result.tracker.run_id).data.metrics
        figures["tracking_metrics"] = {k: metrics[k] for k in ("traces", "traces/seconds", "assessments",
                                                               "assessments/seconds") if k in metrics}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--tracking", choices=("on", "off"), default="off")
    parser.add_argument("--trace-sample", type=int, help="tracking.trace_sample for the run (default: the config's)")
    parser.add_argument("--folder", type=Path, required=True, help="a scratch folder for the dataset, run and store")
    parser.add_argument("--store", type=Path, help="the MLflow SQLite file (default: mlflow.db in --folder)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    figures = measure(args.samples, args.tracking == "on", args.folder, args.trace_sample, args.store)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
