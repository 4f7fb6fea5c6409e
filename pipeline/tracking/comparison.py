"""A sweep's comparison: one row per job (its swept values, state and metrics) and a plot per metric.

Written at the end of a sweep into `<sweep>/comparison/`: `comparison.csv` (raw numbers),
`comparison.md` (the same, readable) and `plots/<metric>_vs_<key>.png`, each metric against each
swept key, one line per combination of the other swept keys, with the accuracy's 95% confidence
interval as error bars where summary.json has it (`accuracy_ci_low`/`accuracy_ci_high`).
Metrics come from each job's summary.json, read with .get() so older folders simply lack some.
Nothing here talks to MLflow; pipeline.tracking.sweep uploads the files to the sweep's parent run.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.core.files import read_json
from pipeline.core.folder_names import COMPARISON_CSV, COMPARISON_MD, SUMMARY_FILE
from pipeline.core.redact import MASK, hide_credentials, is_secret_key

# The summary's headline numbers, in the order they are shown; pass_at_<k> follow accuracy.
METRICS = ("accuracy", "tokens_per_second", "decode_tokens_per_second", "prefill_tokens_per_second",
           "latency_p50_s", "latency_p95_s", "ttft_p50_s", "ttft_p95_s", "peak_memory_bytes",
           "reasoning_tokens_mean", "reasoning_tokens_p95", "reasoning_truncated_share", "answer_tokens_mean")
# shown only where some job thought (else every sweep of a model that does not think gets columns of zeros)
REASONING_METRICS = ("reasoning_tokens_mean", "reasoning_tokens_p95", "reasoning_truncated_share", "answer_tokens_mean")
CI_LOW, CI_HIGH = "accuracy_ci_low", "accuracy_ci_high"
FOLDER = "comparison"


@dataclass
class Comparison:
    csv: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)


def swept_values(overrides: list[str], swept: list[str]) -> dict[str, str]:
    """A job's value of each swept key, from its overrides (`key=value`, `+key=value`); secrets masked."""
    values = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if sep and key in swept:
            values[key] = MASK if is_secret_key(key) else hide_credentials(value)
    return {key: values.get(key, "") for key in swept}


def comparison_rows(jobs: list[dict[str, Any]], swept: list[str]) -> list[dict[str, Any]]:
    """One row per job: job number, swept values, state, then every metric its summary.json holds."""
    rows = []
    for job in jobs:
        summary_path = Path(job["dir"]) / SUMMARY_FILE
        summary = read_json(summary_path) if summary_path.is_file() else {}
        row: dict[str, Any] = {"job": job["num"], **swept_values(job["overrides"], swept), "state": job["state"]}
        for name in METRICS:
            row[name] = summary.get(name)
            if name == "accuracy":
                row[CI_LOW], row[CI_HIGH] = summary.get(CI_LOW), summary.get(CI_HIGH)
                for k, value in sorted((summary.get("pass_at_k") or {}).items(), key=lambda item: int(item[0])):
                    row[f"pass_at_{k}"] = value
        rows.append(row)
    return rows


def metric_names(rows: list[dict[str, Any]], swept: list[str]) -> list[str]:
    """The metric columns that at least one job has a number for (the CI columns go with accuracy)."""
    columns = [c for row in rows for c in row if c not in ("job", "state", CI_LOW, CI_HIGH, *swept)]
    seen = list(dict.fromkeys(columns))
    thought = any(row.get("reasoning_tokens_mean") or row.get("reasoning_truncated_share") for row in rows)
    return [c for c in seen if any(isinstance(row.get(c), (int, float)) for row in rows)
            and (thought or c not in REASONING_METRICS)]


def write_comparison(sweep_dir: Path, jobs: list[dict[str, Any]], swept: list[str],
                     draw: Optional[Callable[..., list[Path]]] = None) -> Comparison:
    """Write the table (CSV and Markdown) and the plots under `<sweep_dir>/comparison/`; `draw`
    stands in for write_plots (pipeline.tracking.plot_process draws them in another process)."""
    folder = sweep_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(jobs, swept)
    metrics = metric_names(rows, swept)
    has_ci = any(row.get(CI_LOW) is not None for row in rows)
    columns = ["job", *swept, "state", *[c for m in metrics for c in ([m, CI_LOW, CI_HIGH] if m == "accuracy"
                                                                      and has_ci else [m])]]
    comparison = Comparison(folder / COMPARISON_CSV, folder / COMPARISON_MD)
    with comparison.csv.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: "" if row.get(c) is None else row.get(c) for c in columns} for row in rows)
    comparison.markdown.write_text(markdown_table(rows, swept, metrics), encoding="utf-8")
    comparison.plots = (draw or write_plots)(rows, swept, metrics, folder / "plots")
    return comparison


def markdown_table(rows: list[dict[str, Any]], swept: list[str], metrics: list[str]) -> str:
    header = ["job", *swept, "state", *[f"{m} (95% CI)" if m == "accuracy" and _has_ci(rows) else m for m in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["job"]), *[row[key] for key in swept], row["state"]]
        for name in metrics:
            cell = _number(row.get(name))
            if name == "accuracy" and row.get(CI_LOW) is not None and row.get(CI_HIGH) is not None:
                cell += f" [{_number(row[CI_LOW])}, {_number(row[CI_HIGH])}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict[str, Any]], swept: list[str], metrics: list[str], folder: Path) -> list[Path]:
    """A PNG per metric and swept key; nothing when no job succeeded."""
    from matplotlib.figure import Figure  # the object API renders with Agg and leaves pyplot's state alone

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in metrics:
        for key in swept:
            figure = Figure(figsize=(6, 4), dpi=100)
            axes = figure.add_subplot()
            others = [other for other in swept if other != key]
            plotted = _plot_lines(axes, rows, key, others, metric)
            if not plotted:
                continue
            axes.set_xlabel(key)
            axes.set_ylabel(metric)
            axes.set_title(f"{metric} by {key}" + (" (95% CI)" if metric == "accuracy" and _has_ci(rows) else ""))
            axes.grid(alpha=0.3)
            if len(plotted) > 1:
                axes.legend(title=", ".join(others), fontsize="small")
            # fixed margins, sized for these labels: tight_layout measured every text twice and
            # took half of the plots' time (0.7 s of 1.4 s for nine plots on a 2-core CPU)
            figure.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.92)
            path = folder / plot_name(metric, key)
            figure.savefig(path)
            paths.append(path)
    return paths


def _plot_lines(axes: Any, rows: list[dict[str, Any]], key: str, others: list[str], metric: str) -> list[str]:
    """One line per combination of the other swept keys; returns the labels of the lines drawn."""
    usable = [row for row in rows if isinstance(row.get(metric), (int, float))]
    numeric = all(_float(row[key]) is not None for row in usable)
    categories = sorted({row[key] for row in usable}, key=lambda v: (_float(v) is None, _float(v) or 0.0, v))
    label_of = (lambda row: ", ".join(str(row[o]) for o in others)) if others else (lambda row: metric)
    labels = []
    for label, group in groupby(sorted(usable, key=label_of), key=label_of):
        points = sorted(group, key=lambda row: _float(row[key]) if numeric else categories.index(row[key]))
        xs = [_float(row[key]) if numeric else categories.index(row[key]) for row in points]
        ys = [row[metric] for row in points]
        errors = _ci_errors(points) if metric == "accuracy" else None
        axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, label=label)
        labels.append(label)
    if labels and not numeric:
        axes.set_xticks(range(len(categories)), categories)
    return labels


def _ci_errors(points: list[dict[str, Any]]) -> Optional[list[list[float]]]:
    if not all(row.get(CI_LOW) is not None and row.get(CI_HIGH) is not None for row in points):
        return None
    return [[max(0.0, row["accuracy"] - row[CI_LOW]) for row in points],
            [max(0.0, row[CI_HIGH] - row["accuracy"]) for row in points]]


def _has_ci(rows: list[dict[str, Any]]) -> bool:
    return any(row.get(CI_LOW) is not None for row in rows)


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot_name(metric: str, key: str) -> str:
    """The file name of the plot of `metric` against the swept `key`."""
    return f"{_file_name(metric)}_vs_{_file_name(key)}.png"


def _file_name(text: str) -> str:
    return re.sub(r"[^\w.-]", "_", text)
