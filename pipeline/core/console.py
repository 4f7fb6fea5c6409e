"""What a run and a sweep print in the terminal: short, aligned, and on stdout."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Optional, TextIO

from pipeline.core.records import Summary

PEAK_MEMORY_KINDS = {"cuda_max_allocated": "CUDA max allocated", "process_peak_rss": "process peak RSS"}
CI_METHODS = {"wilson": "Wilson", "bootstrap": "seeded bootstrap"}


def gib(size: Optional[int]) -> str:
    """Bytes for people: 1.50 GiB, 12.0 MiB."""
    if size is None:
        return "unknown"
    if abs(size) >= 2**30:
        return f"{size / 2**30:.2f} GiB"
    if abs(size) >= 2**20:
        return f"{size / 2**20:.1f} MiB"
    return f"{size / 2**10:.1f} KiB"


def run_summary(summary: Summary, run_dir: Path, mlflow: Optional[dict[str, str]]) -> str:
    stages = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in summary.stage_seconds.items())
    lines = [
        f"samples   {summary.num_samples}" + (f" ({summary.num_errors} could not be completed: status error in "
                                              "the transcript)" if summary.num_errors else ""),
        f"accuracy  {score_text(summary)}",
        *([likelihood_text(summary.likelihood)] if summary.likelihood else []),
        *([judge_text(summary.judge, summary.scorer)] if summary.judge else []),
        *(["pass@k    " + ", ".join(f"pass@{k} {v:.3f}" for k, v in summary.pass_at_k.items())]
          if summary.pass_at_k else []),
        *([f"tools     {summary.tool_calls} calls, {summary.tool_errors} failed (tool_error in the transcript)"]
          if summary.tool_calls else []),
        *([f"thinking  reasoning tokens mean {summary.reasoning_tokens_mean:.1f}, p95 {summary.reasoning_tokens_p95:.0f}; "
           f"{summary.reasoning_truncated_share:.1%} never closed (scored as no answer); answer tokens mean "
           f"{summary.answer_tokens_mean:.1f}"]
          if summary.reasoning_tokens_mean or summary.reasoning_truncated_share else []),
        *([f"cache     {summary.cache_hits} model generation(s) read from the response cache (cached: true in the "
           "transcript); the speed figures count only what was generated"] if summary.cache_hits else []),
        f"speed     prefill {summary.prefill_tokens_per_second:.0f} tok/s, decode {summary.decode_tokens_per_second:.0f} "
        f"tok/s, {summary.tokens_per_second:.1f} completion tok/s overall; TTFT p50 {summary.ttft_p50_s:.3f} s, "
        f"p95 {summary.ttft_p95_s:.3f} s; latency p50 {summary.latency_p50_s:.3f} s, p95 {summary.latency_p95_s:.3f} s",
        *([f"memory    peak {summary.peak_memory_bytes / 2**20:.0f} MiB "
           f"({PEAK_MEMORY_KINDS.get(summary.peak_memory_kind, summary.peak_memory_kind)})"]
          if summary.peak_memory_bytes else []),
        f"stages    {stages}",
        f"run dir   {_relative(run_dir)}",
    ]
    if mlflow:
        lines.append(f"mlflow    run {mlflow['run_id']} in experiment '{mlflow['experiment']}' "
                     f"({mlflow['uri']}); {ui_hint(mlflow['uri'], mlflow['url'])}")
    else:
        lines.append("mlflow    off (tracking=none)")
    return "\n".join(lines)


def ui_hint(uri: str, page: str) -> str:
    """How to see `page` (an address in the MLflow UI, `#/experiments/...`) of the store at `uri` (credentials
    masked): a tracking server is its own UI; `make ui` only where this folder's Makefile serves that store
    (a checkout of the project); elsewhere (an installed `llm-pipeline`) the `mlflow ui` command line."""
    if uri.startswith(("http://", "https://")):
        return f"open {re.sub(r'://[^/@]*@', '://', uri).rstrip('/')}/{page}"
    makefile = Path("Makefile")
    serves = makefile.is_file() and re.search(r"^ui:", makefile.read_text(errors="replace"), re.MULTILINE) and \
        uri.removeprefix("sqlite:///") == str(Path("runs/mlflow.db").absolute())
    command = "`make ui`" if serves else f"`mlflow ui --backend-store-uri {uri}`"
    return f"{command}, then http://127.0.0.1:5000/{page}"


def likelihood_text(metrics: dict[str, float]) -> str:
    """`choices   acc 0.900 [0.596, 0.982], acc_norm ..., acc_bytes ...` or `perplexity word ..., byte ..., bits/byte ...`."""
    if "acc" in metrics:
        return "choices   " + ", ".join(f"{name} {metrics[name]:.3f} [{metrics[name + '_ci_low']:.3f}, "
                                        f"{metrics[name + '_ci_high']:.3f}]" for name in ("acc", "acc_norm", "acc_bytes"))
    return (f"perplexity word {metrics['word_perplexity']:.3g}, byte {metrics['byte_perplexity']:.3g}, "
            f"bits per byte {metrics['bits_per_byte']:.3f}")


def judge_text(judge: dict[str, Any], scorer: str) -> str:
    """`judge     0.975 [0.943, 0.989] 95% CI, 195 graded, 0 failed; agrees with exact_match on 0.990 (kappa 0.95)`."""
    mean = "n/a (nothing graded)" if judge.get("mean") is None else (
        f"{judge['mean']:.3f}" + ("" if judge.get("ci_low") is None else
                                  f" [{judge['ci_low']:.3f}, {judge['ci_high']:.3f}] 95% CI"))
    text = f"{judge.get('name', 'judge'):<9} {mean}, {judge.get('graded', 0)} graded, {judge.get('errors', 0)} failed"
    if judge.get("agreement") is not None:
        kappa = "n/a" if judge.get("kappa") is None else f"{judge['kappa']:.3f}"
        text += (f"; agrees with {scorer} on {judge['agreement']:.3f} of {judge['agreement_n']} "
                 f"(Cohen's kappa {kappa})")
    return text


def score_text(summary: Summary) -> str:
    """`0.980 [0.950, 0.992] 95% CI (Wilson, 200 samples); 196/200 exact_match` (n/a without references)."""
    if summary.accuracy is None:
        return "n/a (no references)"
    interval = "" if summary.accuracy_ci_low is None else (
        f" [{summary.accuracy_ci_low:.3f}, {summary.accuracy_ci_high:.3f}] 95% CI "
        f"({CI_METHODS.get(summary.accuracy_ci_method, summary.accuracy_ci_method)}, {summary.accuracy_ci_samples} samples)")
    return f"{summary.accuracy:.3f}{interval}; {summary.correct}/{summary.num_scored} {summary.scorer}".rstrip()


def _figure(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def sweep_table(jobs: list[dict[str, Any]]) -> str:
    """One row per job: the overrides that set it apart, its state, accuracy and speed; with a judge (scoring=judge)
    its mean grade and agreement with the scorer (share, Cohen's kappa)."""
    shared = set.intersection(*(set(job["overrides"]) for job in jobs)) if len(jobs) > 1 else set()
    judged = any(job.get("judge") for job in jobs)
    header = ("job", "swept", "state", "accuracy", "tokens/s") + (("judge", "agreement", "kappa") if judged else ())
    rows = [header] + [(
        str(job["num"]),
        " ".join(o for o in job["overrides"] if o not in shared) or "-",
        job["state"],
        _figure(job.get("accuracy")),
        "-" if job.get("tokens_per_second") is None else f"{job['tokens_per_second']:.1f}",
    ) + (tuple(_figure((job.get("judge") or {}).get(k)) for k in ("mean", "agreement", "kappa")) if judged else ())
        for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _relative(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


class ProgressSink:
    """A StreamSink that shows, on one rewritten terminal line, how many generations are done.

    Shown only on a terminal (a log file gets execute's progress lines instead): at the first
    completion, then at most every `every_s` seconds, and cleared at the end. `total` is what is
    left to answer; a resumed run says how many answers it `kept` from before. A log line that a
    terminal handler prints meanwhile clears the progress line first (the next completion draws it
    again), so the two never run together. Counts completions only: it asks for no per-token text."""

    streams_text = False

    def __init__(self, total: int, out: TextIO, every_s: float = 0.2, kept: int = 0, label: str = "execute") -> None:
        self.total, self.out, self.every_s, self.kept, self.label = total, out, every_s, kept, label
        self.left = "answers to give" if label == "execute" else f"to {label}"  # what the count is of
        self.done = 0
        self.started = time.perf_counter()
        self.shown = self.started - every_s  # the first completion is shown at once
        self.enabled = out.isatty()
        self.on_screen = False
        # handlers that print to a terminal: a log record clears the progress line before it is printed
        self.handlers = [h for h in logging.getLogger().handlers if _on_terminal(h)] if self.enabled else []
        for handler in self.handlers:
            handler.addFilter(self)

    def on_text(self, row: int, text: str) -> None:
        pass

    def on_complete(self, row: int, text: str) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.enabled and now - self.shown >= self.every_s:
            self.shown = now
            rate = self.done / max(now - self.started, 1e-9)
            kept = f"; {self.kept} kept from before" if self.kept else ""
            self.out.write(f"\r{self.label:<9} {self.done} generations, {rate:.1f}/s ({self.total} {self.left}{kept})")
            self.out.flush()
            self.on_screen = True

    def filter(self, record: logging.LogRecord) -> bool:
        """logging's filter hook on the terminal's handlers: clear the progress line; the record goes on."""
        self._clear()
        return True

    def close(self) -> None:
        for handler in self.handlers:
            handler.removeFilter(self)
        self._clear()

    def _clear(self) -> None:
        if self.on_screen:
            self.out.write("\r\033[K")
            self.out.flush()
            self.on_screen = False


def _on_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    try:
        return isinstance(handler, logging.StreamHandler) and bool(stream) and stream.isatty()
    except (AttributeError, ValueError):  # a closed stream
        return False
