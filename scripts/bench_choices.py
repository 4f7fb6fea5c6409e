"""The multiple-choice part of `make bench`: our dataset.kind=multiple_choice run against lm-evaluation-harness.

The same job on both sides: a random-weight Llama of about 100M parameters built here (the demo
model's character tokenizer, so a token is a character), N questions (200 by default) of about 200
tokens of context, 4 choices each, as a local JSONL; lm-eval reads it as a local task (a YAML over
the file, `output_type: multiple_choice`, offline) with `--model hf` on the same device, batch size
and dtype. Each side is one command, timed whole (the process, the model's load, the scoring);
ours also reports its execute stage, lm-eval the seconds of its loglikelihood phase (timed around
HFLM.loglikelihood), and both their CPU seconds (fairer on a shared machine). Compared: the time
ratios (ours / lm-eval; the issue's goal is at most 0.5), every choice's log-likelihood
(the largest difference; the goal is within 1e-4) and the accuracy.

Run alone: python scripts/bench_choices.py --questions 40 (or through scripts/bench.py).
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the river stone light garden window paper cloud market winter silver quiet number story "
         "table morning yellow bridge letter forest").split()
TASK = """task: bench_choices
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def lm_eval_driver(module: str, model_class: str, phase: str, prelude: str = "") -> str:
    """lm-eval's CLI, run with `python -c`, with the seconds spent in `model_class.phase` (its scoring or
    generation) summed into the file named by its first argument: the rest of its wall time is importing itself,
    indexing its tasks and loading the model. `prelude`: code run before lm-eval is imported."""
    return f"""
import json, sys, time
{prelude}
from lm_eval.__main__ import cli_evaluate
from {module} import {model_class}
spent = []
phase = {model_class}.{phase}
def timed(self, *args, **kwargs):
    started = time.perf_counter()
    try:
        return phase(self, *args, **kwargs)
    finally:
        spent.append(time.perf_counter() - started)
{model_class}.{phase} = timed
out = sys.argv.pop(1)
sys.argv = ["lm_eval", *sys.argv[1:]]
try:
    cli_evaluate()
finally:
    open(out, "w").write(json.dumps(sum(spent)))
"""


LM_EVAL_DRIVER = lm_eval_driver("lm_eval.models.huggingface", "HFLM", "loglikelihood")


def write_questions(path: Path, questions: int, context_chars: int = 200, seed: int = 0) -> Path:
    """`questions` records {id, question, choices (4), answer (index)}: about context_chars characters of
    context (a token each, with the demo tokenizer) and choices of 1-3 words."""
    rng = random.Random(seed)
    lines = []
    for index in range(questions):
        words: list[str] = []
        while len(" ".join(words)) < context_chars:
            words.append(rng.choice(WORDS))
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        lines.append(json.dumps({"id": f"q{index}", "question": " ".join(words) + ". Answer:", "choices": choices,
                                 "answer": rng.randrange(4)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_ours(python: str, model: Path, data: Path, cwd: Path, device: str, batch_size: int) -> dict[str, Any]:
    command = [python, "-m", "pipeline", f"runtime.model={model}", f"dataset.path={data}", "dataset.kind=multiple_choice",
               "dataset.fields.prompt=question", "session.chat_template=false", "tracking=none",
               f"runtime.device={device}", "runtime.dtype=float32", f"runtime.batch_size={batch_size}"]
    cwd.mkdir(parents=True, exist_ok=True)
    finished, wall, cpu = _timed_run(command, cwd)
    if finished.returncode != 0:
        raise RuntimeError("our run failed: " + finished.stderr[-1500:])
    (folder,) = [p for p in (cwd / "runs").glob("*/*") if (p / "summary.json").is_file()]
    records = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    summary = json.loads((folder / "summary.json").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "execute_s": summary["stage_seconds"]["execute"], "load_s": summary["stage_seconds"]["load"],
            "acc": summary["likelihood"]["acc"],
            "loglikelihoods": {r["sample_id"]: r["loglikelihood"]["loglikelihoods"] for r in records}}


def run_lm_eval(python: str, model: Path, data: Path, cwd: Path, device: str, batch_size: int) -> dict[str, Any]:
    tasks = cwd / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "bench_choices.yaml").write_text(TASK.format(data=data))
    out = cwd / "lm-eval-out"
    command = [python, "-c", LM_EVAL_DRIVER, str(cwd / "scoring_s.json"), "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
               "--tasks", "bench_choices", "--include_path", str(tasks), "--device", device,
               "--batch_size", str(batch_size), "--output_path", str(out), "--log_samples"]
    finished, wall, cpu = _timed_run(command, cwd)
    if finished.returncode != 0:
        raise RuntimeError("lm_eval failed: " + (finished.stderr or finished.stdout)[-1500:])
    (samples_file,) = glob.glob(str(out / "**" / "samples_bench_choices_*.jsonl"), recursive=True)
    (results_file,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    results = json.loads(Path(results_file).read_text())
    lls = {}
    for line in Path(samples_file).read_text().splitlines():
        sample = json.loads(line)
        lls[sample["doc"]["id"]] = [float(pair[0]) for pair in sample["filtered_resps"]]
    return {"wall_s": wall, "cpu_s": cpu, "evaluation_s": float(results.get("total_evaluation_time_seconds", "nan")),
            "scoring_s": json.loads((cwd / "scoring_s.json").read_text()),
            "acc": results["results"]["bench_choices"]["acc,none"], "loglikelihoods": lls}


def _timed_run(command: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """(finished, wall seconds, CPU seconds of the child): CPU time is the fairer figure on a shared machine,
    where the wall clock also counts other people's work."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=_env(cwd))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return finished, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _env(cwd: Path) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_RUN_TOKEN", "MLFLOW_"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(cwd / "datasets-cache"),
               PYTHONPATH=str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
               TOKENIZERS_PARALLELISM="false")
    return env


def bench_choices(scratch: Path, questions: int, device: str = "cpu", batch_size: int = 16,
                  lm_eval_python: Optional[str] = None, model: Optional[Path] = None) -> dict[str, Any]:
    """Both sides once each (lm-eval first: the page cache then favours neither), compared."""
    from bench import build_large_model  # scripts/bench.py: the ~100M random Llama with the demo tokenizer

    scratch.mkdir(parents=True, exist_ok=True)
    model = model or build_large_model(scratch / "model-100m", 768, 12, 2560)
    data = write_questions(scratch / "questions.jsonl", questions)
    theirs = run_lm_eval(lm_eval_python or sys.executable, model, data, scratch / "lm-eval", device, batch_size)
    ours = run_ours(sys.executable, model, data, scratch / "ours", device, batch_size)
    differences = [abs(a - b) for key, values in ours["loglikelihoods"].items()
                   for a, b in zip(values, theirs["loglikelihoods"][key])]
    return {"questions": questions, "choices": 4, "device": device, "batch_size": batch_size,
            "ours_wall_s": ours["wall_s"], "ours_execute_s": ours["execute_s"], "ours_load_s": ours["load_s"],
            "lm_eval_wall_s": theirs["wall_s"], "lm_eval_evaluation_s": theirs["evaluation_s"],
            "ours_cpu_s": ours["cpu_s"], "lm_eval_cpu_s": theirs["cpu_s"],
            "ratio_wall": ours["wall_s"] / theirs["wall_s"], "ratio_cpu": ours["cpu_s"] / theirs["cpu_s"],
            "lm_eval_scoring_s": theirs["scoring_s"], "ratio_scoring": ours["execute_s"] / theirs["scoring_s"],
            "max_loglikelihood_difference": max(differences), "compared": len(differences),
            "acc_ours": ours["acc"], "acc_lm_eval": theirs["acc"]}


def print_choices(figures: dict[str, Any]) -> None:
    print(f"multiple choice vs lm-eval: {figures['questions']} questions x 4 choices, ~200-token contexts, "
          f"~100M random Llama, {figures['device']}, batch {figures['batch_size']}")
    print(f"  lm-eval --model hf   {figures['lm_eval_wall_s']:.1f} s whole command, {figures['lm_eval_cpu_s']:.1f} CPU s "
          f"(its loglikelihood phase {figures['lm_eval_scoring_s']:.1f} s)")
    print(f"  ours                 {figures['ours_wall_s']:.1f} s whole command, {figures['ours_cpu_s']:.1f} CPU s "
          f"(execute {figures['ours_execute_s']:.1f} s)")
    print(f"  ratio ours/lm-eval   wall {figures['ratio_wall']:.2f}, CPU {figures['ratio_cpu']:.2f}, scoring "
          f"{figures['ratio_scoring']:.2f} (goal <= 0.5); largest log-likelihood difference "
          f"{figures['max_loglikelihood_difference']:.2e} over {figures['compared']} choices (goal <= 1e-4); "
          f"acc {figures['acc_ours']:.3f} ours, {figures['acc_lm_eval']:.3f} lm-eval")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lm-eval", metavar="PYTHON", help="the interpreter of a venv with lm_eval (default: this one)")
    parser.add_argument("--scratch", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as name:
        figures = bench_choices(args.scratch or Path(name), args.questions, args.device, args.batch_size, args.lm_eval)
    print_choices(figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
