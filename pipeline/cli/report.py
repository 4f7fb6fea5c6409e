"""`python -m pipeline.report`: runs side by side, and what differs between two of them.

    python -m pipeline.report <run or sweep folder> [more folders]
        one row per run: the settings that differ between the runs, state, score with its 95%
        interval, n, pass@k, speed; then the best run's lead over the next, with a paired 95%
        interval over their shared samples, and whether that lead is more than noise
    python -m pipeline.report --diff A B
        the effective-config differences (config.json, plan.json), both scores and their paired
        difference, and the samples where the two disagree (same id, other score or response)

Plain text for a terminal, Markdown with --markdown. A folder that is not a run or sweep folder
is one line on stderr and exit code 2. Reads run folders only (pipeline.run.reading); runs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from pipeline.core.config import flatten
from pipeline.core.errors import EXIT_USAGE, UserError
from pipeline.run.reading import RunFolder, find_runs
from pipeline.scoring.intervals import paired_difference

# plan entries that describe the machine's state at planning time rather than a decision
VOLATILE_PLAN_KEYS = ("memory.available_bytes", "memory.available_source", "memory.usable_bytes", "checks",
                      "warnings", "reasons")
RESPONSE_WIDTH = 48


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


Block = str | Table  # a line of text, or a table


def comparison(runs: list[RunFolder]) -> list[Block]:
    """The runs side by side, and the best run's lead over the next."""
    flat = [flatten(run.config) for run in runs]
    keys = differing_keys([values for values in flat if values])  # a run without config.json differs in nothing
    with_pass = any(run.summary.get("pass_at_k") for run in runs)
    header = ["run", *keys, "state", "score [95% CI]", "n", *(["pass@k"] if with_pass else []),
              "tok/s", "decode tok/s", "TTFT p95", "peak memory"]
    rows = []
    for run, values in zip(runs, flat):
        summary = run.summary
        rows.append([run.label, *(value_text(values.get(key)) if values else "-" for key in keys), run.state,
                     score_cell(summary),
                     str(summary.get("num_scored", "-")),
                     *([" ".join(f"@{k} {v:.2f}" for k, v in summary.get("pass_at_k", {}).items()) or "-"]
                       if with_pass else []),
                     number(summary.get("tokens_per_second"), ".1f"),
                     number(summary.get("decode_tokens_per_second"), ".1f"),
                     number(summary.get("ttft_p95_s"), ".3f", " s"), memory_cell(summary)])
    blocks: list[Block] = [Table(header, rows)]
    scored = sorted((run for run in runs if run.summary.get("accuracy") is not None),
                    key=lambda run: -run.summary["accuracy"])
    if len(scored) >= 2:
        best, next_best = scored[0], scored[1]
        blocks.append(f"best: {best.label} at {score_cell(best.summary)}; minus {next_best.label}: "
                      + lead(next_best, best))
    return blocks


def differ(a: RunFolder, b: RunFolder, limit: int) -> list[Block]:
    """What differs between two runs: settings, plan, scores, and the samples where they disagree."""
    blocks: list[Block] = [f"A = {a.path}", f"B = {b.path}"]
    for title, left, right in (("config.json", flatten(a.config), flatten(b.config)),
                               ("plan.json", plan_entries(a.plan), plan_entries(b.plan))):
        keys = differing_keys([left, right])
        if not left or not right:
            blocks.append(f"{title}: missing in {'A' if not left else 'B'}")
        elif keys:
            blocks += [f"{title}: {len(keys)} setting(s) differ",
                       Table(["setting", "A", "B"], [[k, value_text(left.get(k)), value_text(right.get(k))]
                                                     for k in keys])]
        else:
            blocks.append(f"{title}: the same")
    blocks.append(Table(["run", "scorer", "score [95% CI]", "n"], [
        [name, run.summary.get("scorer", "-") or "-", score_cell(run.summary), str(run.summary.get("num_scored", "-"))]
        for name, run in (("A", a), ("B", b))]))
    blocks.append("B minus A: " + lead(a, b))
    blocks += disagreements(a, b, limit)
    return blocks


def lead(base: RunFolder, other: RunFolder) -> str:
    """`other` minus `base`: the mean difference over shared samples with a paired 95% interval, and a verdict."""
    left, right = sample_scores(base), sample_scores(other)
    shared = sorted(set(left) & set(right))
    if not shared:
        difference = (other.summary.get("accuracy") or 0.0) - (base.summary.get("accuracy") or 0.0)
        return (f"{difference:+.3f}; no shared scored samples to pair (are both transcripts there?), so no "
                "interval for the difference")
    difference, low, high = paired_difference([left[s] for s in shared], [right[s] for s in shared])
    verdict = "more than noise" if low > 0 or high < 0 else "within noise (the interval includes 0)"
    return f"{difference:+.3f}, paired 95% CI [{low:+.3f}, {high:+.3f}] over {len(shared)} shared samples: {verdict}"


def disagreements(a: RunFolder, b: RunFolder, limit: int) -> list[Block]:
    left, right = a.answers(), b.answers()
    if left is None or right is None:
        return [f"samples: no transcript in {'A' if left is None else 'B'}, nothing to compare sample by sample"]
    shared = [key for key in left if key in right]
    differing = [key for key in shared if left[key].score != right[key].score
                 or left[key].response != right[key].response]
    scores_differ = sum(left[key].score != right[key].score for key in differing)
    only = [f"{len(set(left) - set(right))} only in A" if set(left) - set(right) else "",
            f"{len(set(right) - set(left))} only in B" if set(right) - set(left) else ""]
    line = (f"samples: {len(differing)} of {len(shared)} shared answers disagree ({scores_differ} in score, "
            f"{len(differing) - scores_differ} in response only)" + "".join(f"; {o}" for o in only if o))
    if not differing:
        return [line]
    shown = differing if limit <= 0 else differing[:limit]
    rows = [[sample_id if index == 0 else f"{sample_id} [{index}]", clip(left[key].reference),
             f"{clip(left[key].response)} ({value_text(left[key].score)})",
             f"{clip(right[key].response)} ({value_text(right[key].score)})"]
            for key in shown for sample_id, index in [key]]
    blocks: list[Block] = [line, Table(["sample", "reference", "A response (score)", "B response (score)"], rows)]
    if len(shown) < len(differing):
        blocks.append(f"... and {len(differing) - len(shown)} more (--limit 0 shows all)")
    return blocks


def sample_scores(run: RunFolder) -> dict[str, float]:
    """sample id -> its mean score over its completions (a sample counts once, as in the summary's interval)."""
    answers = run.answers() or {}
    totals: dict[str, list[float]] = {}
    for (sample_id, _), record in answers.items():
        if record.score is not None:
            totals.setdefault(sample_id, []).append(record.score)
    return {sample_id: sum(scores) / len(scores) for sample_id, scores in totals.items()}


def differing_keys(flat: list[dict[str, Any]]) -> list[str]:
    keys = sorted(set().union(*flat)) if flat else []
    return [key for key in keys if len({json.dumps(f.get(key), sort_keys=True, default=str) for f in flat}) > 1]


def plan_entries(plan: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flatten(plan).items() if not k.startswith(VOLATILE_PLAN_KEYS)}


def score_cell(summary: dict[str, Any]) -> str:
    accuracy = summary.get("accuracy")
    if accuracy is None:
        return "-"
    low, high = summary.get("accuracy_ci_low"), summary.get("accuracy_ci_high")
    return f"{accuracy:.3f}" + ("" if low is None or high is None else f" [{low:.3f}, {high:.3f}]")


def memory_cell(summary: dict[str, Any]) -> str:
    size = summary.get("peak_memory_bytes")
    if not size:
        return "-"
    kind = {"cuda_max_allocated": "CUDA", "process_peak_rss": "RSS"}.get(summary.get("peak_memory_kind", ""), "")
    return f"{size / 2**20:.0f} MiB {kind}".rstrip()


def number(value: Optional[float], form: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{form}}{unit}"


def value_text(value: Any) -> str:
    if value is None:
        return "null"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def clip(text: Optional[str]) -> str:
    """A response as one quoted line, cut to RESPONSE_WIDTH characters."""
    if text is None:
        return "null"
    quoted = json.dumps(text, ensure_ascii=False)
    return quoted if len(quoted) <= RESPONSE_WIDTH else quoted[:RESPONSE_WIDTH - 2] + "…\""


def render(blocks: list[Block], markdown: bool) -> str:
    parts = [block if isinstance(block, str) else (markdown_table(block) if markdown else text_table(block))
             for block in blocks]
    return "\n\n".join(parts) if markdown else "\n".join(parts)


def text_table(table: Table) -> str:
    rows = [table.header] + table.rows
    widths = [max(len(row[i]) for row in rows) for i in range(len(table.header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def markdown_table(table: Table) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(table.header), line(["---"] * len(table.header))] + [line(row) for row in table.rows])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        print(f"error: {message} (python -m pipeline.report --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _Parser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", help="run folders, sweep folders (runs/multirun/...) or folders of runs")
    parser.add_argument("--diff", nargs=2, metavar=("A", "B"), help="compare two run folders in detail")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables instead of plain text")
    parser.add_argument("--limit", type=int, default=20, help="disagreeing samples shown with --diff (0: all)")
    args = parser.parse_args(argv)
    if bool(args.folders) == bool(args.diff):
        parser.error("give run or sweep folders, or --diff A B (not both)")
    try:
        if args.diff:
            runs = find_runs(args.diff)
            if len(runs) != 2:
                raise UserError(f"--diff compares two run folders; {' and '.join(args.diff)} hold {len(runs)} runs "
                                "(name two job folders of a sweep)")
            blocks = differ(runs[0], runs[1], args.limit)
        else:
            blocks = comparison(find_runs(args.folders))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(render(blocks, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
