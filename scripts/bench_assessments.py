"""What MLflow assessments cost a run: `python scripts/bench_assessments.py [--samples 200 2000] [--server]`.

For each sample count, a transcript of that many scored answers (the demo run's record shape) is
logged to a fresh MLflow store as a run would log it at its end (pipeline.tracking.runs.Tracker:
traces, then each trace's Feedback and Expectation), and timed:
  traces        the traces alone (the baseline: what a run paid before assessments);
  assessments   the assessments as the run writes them: on a SQLite store one transaction per 500;
  public x8     the same through MLflow's public call, 8 workers (what a tracking server gets);
  public x1     the same one call at a time (what a plain loop over mlflow.log_feedback would cost;
                only up to --naive-max samples, it is slow);
  resume        logging the same transcript again (a resumed run): reads what is there, writes nothing.
With --server, the public-call rows are also taken against `mlflow server` on a loopback port (its
own SQLite file), where the workers overlap the round trips. Each figure is the best of --repeats.
Prints a table and writes the figures as JSON (--out, default runs/bench/assessments-<time>.json).
Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.config import DatasetConfig, ScorerConfig, TrackingConfig  # noqa: E402
from pipeline.tracking import assessments  # noqa: E402
from pipeline.tracking.runs import Tracker  # noqa: E402


def transcript(folder: Path, samples: int) -> Path:
    """`samples` scored answers in the demo run's record shape (addition questions, every third wrong)."""
    lines = []
    for i in range(samples):
        a, b = i % 97, (i * 7) % 89
        reference = str(a + b)
        response = reference if i % 3 else str(a + b + 1)
        lines.append(json.dumps({
            "sample_id": f"add-{i:05d}", "sample_index": 0, "kind": "answer", "step": 0, "status": "ok",
            "messages": [{"role": "user", "content": f"What is {a}+{b}?"}], "response": response,
            "reference": reference, "score": float(response == reference), "prompt_tokens": 18,
            "completion_tokens": 3, "finish_reason": "stop", "ttft_s": 0.05, "latency_s": 0.2, "batch": i // 16,
            "config_hash": "bench", "started_at": time.time()}))
    path = folder / f"transcript-{samples}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def tracker(uri: str, dataset: Path) -> Tracker:
    """A fresh run in the store, its dataset logged (which names the scorer), as the runner leaves it."""
    tracker = Tracker(TrackingConfig(uri=uri, experiment="bench-assessments"))
    tracker.start(run_name="bench", tags={})
    tracker.log_dataset(DatasetConfig(name="addition", path=str(dataset), scorer=ScorerConfig(name="exact_match")),
                        samples=0)
    return tracker


def seconds(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(uri: str, path: Path, way: str, workers: int = assessments.WORKERS) -> dict[str, float]:
    """One pass: traces, then the assessments the chosen way, then the same again (a resume)."""
    run = tracker(uri, path)
    from pipeline.tracking.traces import log_traces
    from pipeline.core.transcript import read_transcript

    records = read_transcript(path)
    traces = seconds(lambda: log_traces(run.uri, run.experiment_id, run.run_id, records))
    original = (assessments._insert_sql, assessments.WORKERS)
    if way != "sql":
        assessments._insert_sql = lambda store, todo: False
    assessments.WORKERS = workers
    try:
        def write() -> None:
            done = assessments.log_assessments(run.uri, run.experiment_id, run.run_id, records, "exact_match",
                                               "addition")
            assert done.written == 2 * len(records), done
        written = seconds(write)
        resume = seconds(lambda: assessments.log_assessments(run.uri, run.experiment_id, run.run_id, records,
                                                             "exact_match", "addition"))
    finally:
        assessments._insert_sql, assessments.WORKERS = original
    return {"traces_s": traces, "assessments_s": written, "resume_s": resume}


def best(passes: list[dict[str, float]]) -> dict[str, float]:
    return {key: min(p[key] for p in passes) for key in passes[0]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{folder / 'server.db'}", "--default-artifact-root", str(folder / "art"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            return server, uri
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "server.log").read_text()[-2000:])
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--naive-max", type=int, default=200, help="largest sample count timed one call at a time")
    parser.add_argument("--server", action="store_true", help="also against `mlflow server` on a loopback port")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    results: dict[str, Any] = {"cpus": os.cpu_count(), "workers": assessments.WORKERS, "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-assessments-") as scratch:
        folder = Path(scratch)
        stores = [("sqlite", f"sqlite:///{folder / 'mlflow.db'}")]
        server = None
        if args.server:
            server, uri = start_server(folder)
            stores.append(("server", uri))
        try:
            for samples in args.samples:
                path = transcript(folder, samples)
                for store, uri in stores:
                    ways = [("assessments", "sql", assessments.WORKERS)] if store == "sqlite" else []
                    ways.append((f"public x{assessments.WORKERS}", "public", assessments.WORKERS))
                    if samples <= args.naive_max:
                        ways.append(("public x1", "public", 1))
                    for label, way, workers in ways:
                        figures = best([measure(uri, path, way, workers) for _ in range(args.repeats)])
                        row = {"store": store, "samples": samples, "way": label, **figures,
                               "ms_per_sample": 1000 * figures["assessments_s"] / samples}
                        results["rows"].append(row)
                        print(f"{store:7} {samples:6d} {label:12} traces {figures['traces_s']:7.2f} s  "
                              f"assessments {figures['assessments_s']:7.2f} s ({row['ms_per_sample']:.1f} ms/sample)  "
                              f"resume {figures['resume_s']:6.2f} s", flush=True)
        finally:
            if server is not None:
                os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, nothing else
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:  # a busy machine: its workers outlast a graceful stop
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait(timeout=30)
    out = args.out or Path("runs/bench") / f"assessments-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"figures   {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
