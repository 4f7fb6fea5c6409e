"""Benchmarks, each measured against a baseline in the same run: `make bench` (or `--quick`).

startup, per-sample, contention: the run around the model (scripts/bench_startup.py says how): start-up
time of a mistake, a plan and the whole demo run with its breakdown; the runner's cost per sample with
the fake backend, tracking off and on; the demo run beside a CPU-bound process. `--only startup
per-sample contention` runs just these.

plan: wall time of `python -m pipeline pipeline.until=plan` on the demo model (the issue's target:
under 2 s), against the least a transformers-based planner pays to count the same prompts
(import transformers, load the tokenizer, apply the chat template) and against a bare interpreter.

traces (--traces): the 200-sample demo run tracked in MLflow, with `tracking.traces=true` against
the same run with `tracking.traces=false`, alternated: the execute stage's seconds (traces are
built from the transcript afterwards, so the issue's bound is execute +5%), the seconds spent
logging the 200 traces (the run's `traces/seconds` metric) and the whole command's wall time.

execute, on the demo model and on a random-weight Llama of about 100M parameters built here
(same tokenizer), over the same prompts, greedy, in this process after one warm-up pass each:
  (a) a plain hand-written loop: tokenizer -> model.generate -> decode, batches in dataset order;
  (b) our execute stage at the same batch size (transcript written and fsynced, timing, scoring),
      its passes taken in turn with (a)'s;
  (c) our best settings: the plan's batch_size=auto (on CUDA up to 256, also with compile=true, and
      continuous_batching=true).
Reported as completion tokens/s and the ratio (b)/(a) (the issue's target: at least 0.95).

server: `transformers serve` over the demo model on a free loopback port (cpu), the demo prompts as
chat requests (greedy, the default max_new_tokens, streamed with usage in the last chunk), at the
same concurrency (8) on both sides, after one warm-up pass each, passes taken in turn:
  (a) a plain asyncio loop: openai.AsyncOpenAI and a semaphore of 8;
  (b) our OpenAIBackend.generate (retries, stop strings, tool calls, TTFT and latency per request);
  (a') loop (a) not streamed: what streaming costs on this server (ours streams for time to first token).
Reported as completion tokens/s (the server's usage) and the ratio (b)/(a) (the issue's target: at
least 0.95). With --lm-eval PYTHON (a venv with lm_eval[api]; it is not a dependency of ours), also
  (c) lm-evaluation-harness's `local-chat-completions` (not streamed, num_concurrent=8) over the same
      prompts as a local task (a YAML over a JSONL, offline), its passes taken in turn with (b)'s: the
      seconds of its generation phase and of its whole command, the ratios of ours to each, and how
      many of its answers equal ours.
The server is stopped afterwards.

choices: dataset.kind=multiple_choice against lm-evaluation-harness's `--model hf` on the same job (a ~100M
random Llama, --choices-questions questions of ~200 tokens, 4 choices): wall times, the largest per-choice
log-likelihood difference and both accuracies (scripts/bench_choices.py; lm-eval from --lm-eval or this interpreter).

vllm: one generation job (64 demo prompts x 32 new tokens, greedy, a ~110M random Llama) four ways: `backend=vllm`,
`vllm.LLM.generate` called directly with our plan's engine options (the baseline; the issue's target: ours at most
5 % slower in generation), `backend=transformers`, and lm-eval's `--model vllm` (scripts/bench_vllm.py). Skipped,
with the reason, where vllm is not installed; on a GPU it runs on the GPU (vLLM's build decides).

sweep: `python -m pipeline -m generation.seed=1..8` on the demo model (8 generation-only jobs,
tracked in MLflow under a scratch folder), with model reuse (the default) and with
runtime.reuse=false, against the issue's target: wall time at most 1.3 x (one load + the eight
execute stages), both taken from the jobs' own summary.json. The sweep with reuse runs three times
(once with --quick); its figures are those of the run with the median ratio.

cache: the response cache (cache.enabled=true): `python -m pipeline` on the demo model (tracking off),
run first into an empty cache, then again (--repeats times, the median taken): the second run's wall
time and execute stage against the first's (the ratio), beside the same run without the cache (what
keying and storing cost a cold run) and `pipeline.until=plan` (the floor of any run: what is left
when nothing is generated or loaded).

Prints a table and writes the figures as JSON (default runs/bench/bench-<time>.json under the
launch folder); with tracking on, also logs them to MLflow (experiment "bench" in runs/mlflow.db
there). Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import bench_startup  # noqa: E402 - this folder is on the path when run as a script
PLAN_TARGET_S = 2.0
EXECUTE_TARGET_RATIO = 0.95
SWEEP_TARGET_RATIO = 1.3
SERVER_TARGET_RATIO = 0.95
SERVER_CONCURRENCY = 8
PARTS = ("plan", "startup", "per-sample", "contention", "execute", "large", "server", "choices", "cache", "sweep",
         "vllm")
TRANSFORMERS_PLANNER = """
import json
from transformers import AutoTokenizer
from pipeline.core.config import ASSETS_DIR
tokenizer = AutoTokenizer.from_pretrained(ASSETS_DIR / "demo_model", local_files_only=True)
lines = (ASSETS_DIR / "datasets" / "addition.jsonl").read_text().splitlines()
longest = max(len(tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": json.loads(l)["prompt"]}],
              add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]) for l in lines)
"""


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_RUN_TOKEN", "MLFLOW_"))}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def wall_times(command: list[str], repeats: int, cwd: Path) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=child_env(), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def bench_plan(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        python = [sys.executable]
        ours = wall_times(python + ["-m", "pipeline", "pipeline.until=plan", "tracking=none",  # a folder per run
                                    f"hydra.run.dir={cwd / 'plan'}/${{now:%H-%M-%S-%f}}"], repeats, cwd)
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


# ---- execute: a plain loop against our stage -------------------------------------------------------------------

def build_large_model(folder: Path, hidden: int, layers: int, intermediate: int) -> Path:
    """A random-weight Llama with the demo model's tokenizer and chat template (deterministic: seed 0)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.core.config import ASSETS_DIR

    demo = ASSETS_DIR / "demo_model"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(demo / name, folder / name)
    demo_config = json.loads((demo / "config.json").read_text())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=demo_config["vocab_size"], hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=512, bos_token_id=2, eos_token_id=6, pad_token_id=0,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from pipeline.core.config import CONF_DIR, register, to_config

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=overrides))


def plan_and_load(overrides: list[str]):
    """Our resolve, plan and load stages for these overrides: (config, runtime, samples)."""
    from pipeline.backends.transformers.load import load
    from pipeline.stages.plan import plan as plan_stage
    from pipeline.stages.resolve import resolve

    config = compose_config(overrides)
    plan, samples, backend = plan_stage(config, resolve(config.runtime, config.backend), None, overrides)
    return config, load(plan, backend.chat_template), samples


def hand_written_loop(runtime, prompts: list[str], batch_size: int, max_new_tokens: int) -> tuple[int, float]:
    """The loop a user writes by hand: (completion tokens, seconds). Tokens count up to the end token."""
    import torch

    tokenizer, model = runtime.tokenizer, runtime.model
    stop = model.generation_config.eos_token_id
    started, tokens = time.perf_counter(), 0
    for start in range(0, len(prompts), batch_size):
        encoded = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        for row in output[:, encoded["input_ids"].shape[1]:].tolist():
            ended = row.index(stop) + 1 if stop in row else len(row)
            tokens += ended
            tokenizer.decode(row[:ended], skip_special_tokens=True)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - started


def our_execute(runtime, samples, config, folder: Path) -> tuple[int, float]:
    """Our execute stage as the runner calls it (through the transformers backend): (completion tokens, seconds)."""
    from pipeline.backends.transformers.backend import TransformersBackend
    from pipeline.core.folder_names import TRANSCRIPT_FILE
    from pipeline.core.transcript import TranscriptWriter, read_transcript
    from pipeline.stages.execute import execute

    path = folder / TRANSCRIPT_FILE
    path.unlink(missing_ok=True)
    started = time.perf_counter()
    with TranscriptWriter(path) as writer:
        execute(TransformersBackend.from_runtime(runtime, config.session), samples, config, writer,
                config.config_hash())
    seconds = time.perf_counter() - started
    return sum(r["completion_tokens"] for r in read_transcript(path)), seconds


def rendered_prompts(runtime, samples, config) -> list[str]:
    from pipeline.data.prompts import conversation, render

    return [render(runtime.chat_template, conversation(s, config.session), config.session) for s in samples]


def best_of(measure, repeats: int) -> dict:
    """Tokens/s of `measure()` after one warm-up pass (timed too: it holds any compile): the median of `repeats`."""
    return interleaved([measure], repeats)[0]


def interleaved(measures: list, repeats: int) -> list[dict]:
    """Like best_of for several measures, their passes taken in turn, so a drift in the machine's speed
    (other work, clocks) falls on all of them alike."""
    warmups = [measure()[1] for measure in measures]
    passes: list[list] = [[] for _ in measures]
    for _ in range(repeats):
        for index, measure in enumerate(measures):
            passes[index].append(measure())
    return [{"tokens": runs[0][0], "seconds": [s for _, s in runs], "warmup_s": warmup,
             "tokens_per_second": statistics.median(tokens / seconds for tokens, seconds in runs)}
            for warmup, runs in zip(warmups, passes)]


def bench_execute(label: str, model: str, base: list[str], limit: int, batch_size: int, repeats: int,
                  best: list[list[str]], scratch: Path) -> dict:
    overrides = [f"runtime.model={model}", f"dataset.limit={limit}", "tracking=none", *base]
    config, runtime, samples = plan_and_load(overrides + [f"runtime.batch_size={batch_size}"])
    prompts = rendered_prompts(runtime, samples, config)
    max_new = config.generation.max_new_tokens
    plain, ours = interleaved([lambda: hand_written_loop(runtime, prompts, batch_size, max_new),
                               lambda: our_execute(runtime, samples, config, scratch)], repeats)
    result = {"model": label, "parameters": runtime.plan.model.parameters, "device": runtime.plan.device,
              "dtype": runtime.plan.dtype, "prompts": len(prompts), "max_new_tokens": max_new,
              "batch_size": batch_size, "plain_loop": plain, "ours": ours,
              "ratio_ours_to_plain": ours["tokens_per_second"] / plain["tokens_per_second"], "best": []}
    del runtime
    for extra in best:
        try:
            config, runtime, samples = plan_and_load(overrides + extra)
            measured = best_of(lambda: our_execute(runtime, samples, config, scratch), repeats)
        except Exception as error:  # an option this machine cannot run is a figure too
            result["best"].append({"settings": " ".join(extra), "error": f"{type(error).__name__}: {error}"[:300]})
            continue
        measured.update(settings=" ".join(extra), batch_size=runtime.plan.batch_size,
                        backend_options=runtime.plan.backend_options,
                        ratio_to_plain=measured["tokens_per_second"] / plain["tokens_per_second"])
        result["best"].append(measured)
        del runtime
    return result


# ---- server: the OpenAI-compatible backend against a plain asyncio loop ---------------------------------------

def server_requests(limit: int) -> tuple[list, float, int]:
    """The first `limit` demo prompts as chat requests, with the default generation settings (greedy)."""
    from pipeline.backends.base import Request
    from pipeline.core.config import ASSETS_DIR
    from pipeline.core.records import Message

    generation = compose_config(["tracking=none"]).generation
    lines = (ASSETS_DIR / "datasets" / "addition.jsonl").read_text().splitlines()[:limit]
    requests = [Request([Message("user", json.loads(line)["prompt"])], max_new_tokens=generation.max_new_tokens,
                        temperature=generation.temperature, key=json.loads(line)["id"]) for line in lines]
    return requests, generation.temperature, generation.max_new_tokens


def plain_asyncio_loop(base_url: str, model: str, requests: list, concurrency: int,
                       stream: bool = True) -> tuple[int, float]:
    """The loop a user writes by hand: openai.AsyncOpenAI, a semaphore of `concurrency`, the same streamed
    requests as ours (usage in the last chunk), or not streamed: (completion tokens, seconds)."""
    import asyncio

    import openai

    async def run_all() -> int:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="no-key", max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def one(request) -> int:
            async with gate:
                body = dict(model=model, messages=[{"role": m.role, "content": m.content} for m in request.messages],
                            max_tokens=request.max_new_tokens, temperature=request.temperature)
                if not stream:
                    return (await client.chat.completions.create(**body)).usage.completion_tokens
                chunks = await client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
                tokens = 0
                async for chunk in chunks:
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                return tokens

        try:
            return sum(await asyncio.gather(*(one(request) for request in requests)))
        finally:
            await client.close()

    started = time.perf_counter()
    tokens = asyncio.run(run_all())
    return tokens, time.perf_counter() - started


def our_backend(backend, requests: list) -> tuple[int, float]:
    """OpenAIBackend.generate as the execute stage calls it: (completion tokens, seconds); a failed request
    is an error here, not a figure (the two sides must do the same work)."""
    started = time.perf_counter()
    completions = backend.generate(requests)
    seconds = time.perf_counter() - started
    failed = [completion.error for completion in completions if completion.failed]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(requests)} requests failed, the first: {failed[0]}")
    return sum(completion.completion_tokens for completion in completions), seconds


# lm-evaluation-harness's CLI, run by its own interpreter, with the time of its generation phase taken around
# generate_until (the rest of its wall time is importing itself and building the task)
LM_EVAL_DRIVER = """
import json, sys, time
from lm_eval.__main__ import cli_evaluate
from lm_eval.models.openai_completions import LocalChatCompletion
spent = []
generate_until = LocalChatCompletion.generate_until
def timed(self, *args, **kwargs):
    started = time.perf_counter()
    try:
        return generate_until(self, *args, **kwargs)
    finally:
        spent.append(time.perf_counter() - started)
LocalChatCompletion.generate_until = timed
sys.argv = ["lm_eval", *sys.argv[1:]]
try:
    cli_evaluate()
finally:
    print("LM_EVAL_GENERATE_S=" + json.dumps(spent))
"""
# A task over the same prompts: chat messages (--apply_chat_template), greedy, the same answer length. The stop
# string is the demo model's end token, which ends its answers anyway: lm-eval's default stop (two newlines) is not
# in the demo tokenizer's vocabulary and `transformers serve` answers such a stop string with a 500.
LM_EVAL_TASK = """task: bench_demo_addition
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{reference}}}}"
generation_kwargs:
  until: ["{eos}"]
  max_gen_toks: {max_new}
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_pass(python: str, served, requests: list, max_new: int, concurrency: int, folder: Path) -> dict:
    """One `lm_eval --model local-chat-completions` over `requests` against the served model: its wall time,
    the seconds of its generation phase and its answers in request order."""
    from pipeline.core.config import ASSETS_DIR

    folder.mkdir(parents=True)
    eos = json.loads((ASSETS_DIR / "demo_model" / "tokenizer_config.json").read_text())["eos_token"]
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"id": r.key, "prompt": r.messages[-1].content, "reference": ""}) + "\n"
                            for r in requests))
    (folder / "task").mkdir()
    (folder / "task" / "bench_demo_addition.yaml").write_text(LM_EVAL_TASK.format(data=data, eos=eos, max_new=max_new))
    model_args = ",".join([f"model={served.model}", f"base_url={served.base_url}/chat/completions",
                           f"num_concurrent={concurrency}", "max_retries=1", "tokenized_requests=False",
                           f"eos_string={eos}"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    started = time.perf_counter()
    finished = subprocess.run([python, "-c", LM_EVAL_DRIVER, "--model", "local-chat-completions",
                               "--model_args", model_args, "--tasks", "bench_demo_addition", "--include_path",
                               str(folder / "task"), "--apply_chat_template", "--output_path", str(folder / "out"),
                               "--log_samples"], cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    marker = [line for line in finished.stdout.splitlines() if line.startswith("LM_EVAL_GENERATE_S=")]
    samples = sorted((folder / "out").glob("*/samples_*.jsonl"))
    if finished.returncode != 0 or not marker or not samples:
        raise RuntimeError(f"lm_eval exited {finished.returncode}: " + " ".join((finished.stderr or finished.stdout)
                                                                               .strip().splitlines()[-3:])[-600:])
    answers = {json.loads(line)["doc"]["id"]: json.loads(line)["resps"][0][0]
               for line in samples[-1].read_text().splitlines() if line.strip()}
    return {"wall_s": wall, "generate_s": sum(json.loads(marker[-1].split("=", 1)[1])),
            "answers": [answers.get(r.key) for r in requests]}


def bench_lm_eval(python: str, served, backend, requests: list, max_new: int, concurrency: int, repeats: int,
                  scratch: Path) -> dict:
    """lm-eval's passes taken in turn with ours (the server is warm by now): its generation phase and its
    whole command against our generate over the same requests."""
    runs, ours = [], []
    for index in range(repeats):
        runs.append(lm_eval_pass(python, served, requests, max_new, concurrency, scratch / f"lm-eval-{index}"))
        ours.append(our_backend(backend, requests))
    texts = [completion.text for completion in backend.generate(requests)]
    generate_s = statistics.median(run["generate_s"] for run in runs)
    wall_s = statistics.median(run["wall_s"] for run in runs)
    ours_s = statistics.median(seconds for _, seconds in ours)
    return {"python": python, "model": "local-chat-completions", "streaming": False, "concurrency": concurrency,
            "generate_s": [run["generate_s"] for run in runs], "wall_s": [run["wall_s"] for run in runs],
            "ours_s": [seconds for _, seconds in ours], "ours_tokens": ours[0][0],
            "median_generate_s": generate_s, "median_wall_s": wall_s, "median_ours_s": ours_s,
            "same_answers": sum(a == b for a, b in zip(runs[0]["answers"], texts)), "prompts": len(requests),
            # > 1: ours is faster; the quotient of seconds for the same requests is that of tokens/s inverted
            "ratio_ours_to_lm_eval_generate": generate_s / ours_s, "ratio_ours_to_lm_eval_wall": wall_s / ours_s}


def bench_server(limit: int, concurrency: int, repeats: int, scratch: Path, lm_eval: Optional[str] = None) -> dict:
    """`transformers serve` over the demo model on a free loopback port, (a) and (b) interleaved, then stopped."""
    from pipeline.backends.openai import OpenAIBackend, OpenAIConfig
    from pipeline.backends.openai.local_server import TransformersServe
    from pipeline.core.config import ASSETS_DIR

    requests, temperature, max_new = server_requests(limit)
    started = time.perf_counter()
    with TransformersServe(ASSETS_DIR / "demo_model", scratch / "serve.log") as served:
        startup = time.perf_counter() - started
        backend = OpenAIBackend(OpenAIConfig(base_url=served.base_url, max_concurrency=concurrency), served.model)
        backend.load()  # the plan's and load's check of /models, outside the timing as in a run
        plain, ours, unstreamed = interleaved([
            lambda: plain_asyncio_loop(served.base_url, served.model, requests, concurrency),
            lambda: our_backend(backend, requests),
            lambda: plain_asyncio_loop(served.base_url, served.model, requests, concurrency, stream=False)], repeats)
        result = {"server": "transformers serve (cpu)", "model": "demo", "prompts": len(requests),
                  "max_new_tokens": max_new, "temperature": temperature, "concurrency": concurrency,
                  "streaming": True, "server_startup_s": startup, "plain_asyncio": plain, "ours": ours,
                  "ratio_ours_to_plain": ours["tokens_per_second"] / plain["tokens_per_second"],
                  # what streaming costs on this server: ours must stream (time to first token), lm-eval does not
                  "plain_asyncio_unstreamed": unstreamed,
                  "ratio_streamed_to_unstreamed": plain["tokens_per_second"] / unstreamed["tokens_per_second"],
                  "target_ratio": SERVER_TARGET_RATIO, "base_url": served.base_url, "model_id": served.model}
        if lm_eval:
            try:
                result["lm_eval"] = bench_lm_eval(lm_eval, served, backend, requests, max_new, concurrency,
                                                  repeats, scratch)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:  # said in the figures, not fatal
                result["lm_eval"] = {"python": lm_eval, "error": f"{type(error).__name__}: {error}"[:800]}
    return result


# ---- sweep: eight jobs with and without model reuse -------------------------------------------------------------

def bench_sweep(jobs: int, limit: int, base: list[str], tracking: bool, scratch: Path, repeats: int) -> dict:
    """The sweep with reuse `repeats` times (its figures: the run of median ratio), without reuse once."""
    runs = [sweep_once(jobs, limit, base, tracking, scratch / f"sweep-reuse-{i}", "true") for i in range(repeats)]
    ratios = [run["ratio_wall_to_floor"] for run in runs]
    results = {"reuse": sorted(runs, key=lambda run: run["ratio_wall_to_floor"])[len(runs) // 2],
               "no_reuse": sweep_once(jobs, limit, base, tracking, scratch / "sweep-no-reuse", "false")}
    results["reuse"]["ratios_of_all_repeats"] = ratios
    results["target_ratio"] = SWEEP_TARGET_RATIO
    results["tracking"] = tracking
    results["speedup_from_reuse"] = results["no_reuse"]["wall_s"] / results["reuse"]["wall_s"]
    return results


def sweep_once(jobs: int, limit: int, base: list[str], tracking: bool, cwd: Path, reuse: str) -> dict:
    cwd.mkdir()
    seeds = ",".join(str(seed) for seed in range(1, jobs + 1))
    command = [sys.executable, "-m", "pipeline", "-m", f"generation.seed={seeds}", "generation.temperature=0.7",
               f"dataset.limit={limit}", f"runtime.reuse={reuse}", f"hydra.sweep.dir={cwd / 'sweep'}",
               *([] if tracking else ["tracking=none"]), *base]
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=child_env(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    summaries = [json.loads(path.read_text()) for path in sorted(
        (cwd / "sweep").glob("*/summary.json"), key=lambda p: int(p.parent.name))]
    loads = [json.loads((path.parent / "load.json").read_text()) for path in sorted(
        (cwd / "sweep").glob("*/load.json"), key=lambda p: int(p.parent.name))]
    load_s = [s["stage_seconds"]["load"] for s in summaries]
    execute_s = [s["stage_seconds"]["execute"] for s in summaries]
    other_s = [sum(v for k, v in s["stage_seconds"].items() if k not in ("load", "execute")) for s in summaries]
    floor = load_s[0] + sum(execute_s)
    return {"jobs": len(summaries), "wall_s": wall, "load_s": load_s, "execute_s": execute_s,
            "other_stages_s": other_s,  # resolve, plan, summarize
            "outside_stages_s": wall - sum(load_s) - sum(execute_s) - sum(other_s),
            "weights_loads": sum(not record["reused"] for record in loads),
            "one_load_plus_executes_s": floor, "ratio_wall_to_floor": wall / floor,
            "meets_target": wall <= SWEEP_TARGET_RATIO * floor}


def bench_cache(limit: int, repeats: int, scratch: Path) -> dict:
    """Wall and execute seconds of the demo run without the cache, into an empty cache, and again from it."""
    cache = ["cache.enabled=true", f"cache.dir={scratch / 'responses'}"]

    def one(name: str, *extra: str) -> dict:
        cwd = scratch / f"cache-{name}"
        cwd.mkdir()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipeline", "tracking=none", f"dataset.limit={limit}", *extra],
                       cwd=cwd, env=child_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        if "pipeline.until=plan" in extra:
            return {"wall_s": wall}
        (path,) = cwd.glob("runs/*/*/summary.json")
        summary = json.loads(path.read_text())
        return {"wall_s": wall, "execute_s": summary["stage_seconds"]["execute"],
                "load_s": summary["stage_seconds"].get("load", 0.0), "cache_hits": summary["cache_hits"],
                "samples": summary["num_samples"]}

    results = {"samples": limit, "no_cache": one("off"), "first": one("first", *cache)}
    again = [one(f"again-{i}", *cache) for i in range(repeats)]
    results["second"] = sorted(again, key=lambda run: run["wall_s"])[len(again) // 2]
    results["second_wall_s_of_all_repeats"] = [run["wall_s"] for run in again]
    results["plan_only"] = one("plan", "pipeline.until=plan")
    results["ratio_second_to_first_wall"] = results["second"]["wall_s"] / results["first"]["wall_s"]
    results["ratio_second_to_first_execute"] = results["second"]["execute_s"] / results["first"]["execute_s"]
    results["ratio_first_to_no_cache_wall"] = results["first"]["wall_s"] / results["no_cache"]["wall_s"]
    return results


def print_cache(figures: dict) -> None:
    first, second = figures["first"], figures["second"]
    print(f"\ncache: the demo run of {figures['samples']} samples, run again from the response cache (tracking off)")
    print(f"  without the cache        {figures['no_cache']['wall_s']:7.2f} s   execute "
          f"{figures['no_cache']['execute_s']:.2f} s")
    print(f"  first, into the cache    {first['wall_s']:7.2f} s   execute {first['execute_s']:.2f} s   (ratio to "
          f"no cache {figures['ratio_first_to_no_cache_wall']:.2f})")
    print(f"  second, from the cache   {second['wall_s']:7.2f} s   execute {second['execute_s']:.2f} s   "
          f"{second['cache_hits']}/{second['samples']} hits, model load {second['load_s']:.2f} s")
    print(f"  ratio second/first       {figures['ratio_second_to_first_wall']:.3f} wall, "
          f"{figures['ratio_second_to_first_execute']:.3f} execute (the first's execute includes the model's load: "
          "with the cache on it waits for the first request the cache does not have)")
    print(f"  pipeline.until=plan      {figures['plan_only']['wall_s']:7.2f} s   (the floor: resolve and plan only)")


# ---- report ----------------------------------------------------------------------------------------------------

def print_report(results: dict) -> None:
    if "vllm" in results:
        from bench_vllm import print_vllm

        print_vllm(results["vllm"])
    choices = results.get("choices")
    if choices and "error" in choices:
        print(f"multiple choice vs lm-eval: failed: {choices['error']}")
    elif choices:
        from bench_choices import print_choices

        print_choices(choices)
    for part, show in (("startup", bench_startup.print_startup), ("per_sample", bench_startup.print_per_sample),
                       ("contention", bench_startup.print_contention)):
        if part in results:
            show(results[part])
    plan = results["plan"]
    if plan.get("skipped"):
        print("plan: skipped (--skip plan)")
    else:
        print(f"plan (pipeline.until=plan on the demo model, median of {results['repeats']}):")
        print(f"  ours                          {plan['median_s']['ours']:.2f} s   (target < {PLAN_TARGET_S:.0f} s: "
              f"{'met' if plan['meets_target'] else 'MISSED'})")
        print(f"  transformers tokenizer only   {plan['median_s']['transformers_tokenizer']:.2f} s   "
              f"(ratio ours/this {plan['ratio_ours_to_transformers_tokenizer']:.2f})")
        print(f"  bare interpreter              {plan['median_s']['interpreter']:.2f} s")
    if "traces" in results:
        print_traces(results["traces"], results["repeats"])
    for figures in results["execute"]:
        print(f"\nexecute: {figures['model']} ({figures['parameters'] / 1e6:.1f}M parameters, {figures['device']}, "
              f"{figures['dtype']}), {figures['prompts']} prompts x up to {figures['max_new_tokens']} tokens")
        print(f"  (a) plain generate loop, batch {figures['batch_size']:<4} "
              f"{figures['plain_loop']['tokens_per_second']:9.1f} tokens/s")
        print(f"  (b) our execute stage, batch {figures['batch_size']:<4}  {figures['ours']['tokens_per_second']:9.1f} "
              f"tokens/s   ratio (b)/(a) {figures['ratio_ours_to_plain']:.3f} (target >= {EXECUTE_TARGET_RATIO}: "
              f"{'met' if figures['ratio_ours_to_plain'] >= EXECUTE_TARGET_RATIO else 'MISSED'})")
        for best in figures["best"]:
            if "error" in best:
                print(f"  (c) ours, {best['settings']}: failed: {best['error']}")
                continue
            print(f"  (c) ours, {best['settings']} (batch {best['batch_size']}) {best['tokens_per_second']:9.1f} "
                  f"tokens/s   ratio to (a) {best['ratio_to_plain']:.3f} (first pass {best['warmup_s']:.2f} s)")
    server = results.get("server")
    if server and server.get("skipped"):
        print(f"\nserver: skipped: {server['skipped']}")
    elif server:
        print(f"\nserver: {server['server']} over the {server['model']} model, {server['prompts']} prompts x up to "
              f"{server['max_new_tokens']} tokens, greedy, streamed, concurrency {server['concurrency']} "
              f"(server start {server['server_startup_s']:.1f} s)")
        print(f"  (a) plain asyncio loop (AsyncOpenAI + semaphore) {server['plain_asyncio']['tokens_per_second']:9.1f} "
              f"tokens/s")
        print(f"  (b) our OpenAIBackend.generate               {server['ours']['tokens_per_second']:9.1f} tokens/s   "
              f"ratio (b)/(a) {server['ratio_ours_to_plain']:.3f} (target >= {SERVER_TARGET_RATIO}: "
              f"{'met' if server['ratio_ours_to_plain'] >= SERVER_TARGET_RATIO else 'MISSED'})")
        print(f"  (a') the same loop, not streamed             {server['plain_asyncio_unstreamed']['tokens_per_second']:9.1f} "
              f"tokens/s   (streaming costs: (a)/(a') {server['ratio_streamed_to_unstreamed']:.3f})")
        lm_eval = server.get("lm_eval")
        if lm_eval and "error" in lm_eval:
            print(f"  (c) lm-eval local-chat-completions: failed: {lm_eval['error']}")
        elif lm_eval:
            print(f"  (c) lm-eval local-chat-completions (not streamed), median of {len(lm_eval['wall_s'])}: "
                  f"generation {lm_eval['median_generate_s']:.2f} s, whole command {lm_eval['median_wall_s']:.2f} s; "
                  f"ours {lm_eval['median_ours_s']:.2f} s over the same requests")
            print(f"      ratio ours/lm-eval (tokens/s) {lm_eval['ratio_ours_to_lm_eval_generate']:.2f} on generation, "
                  f"{lm_eval['ratio_ours_to_lm_eval_wall']:.2f} on its whole command; same answers "
                  f"{lm_eval['same_answers']}/{lm_eval['prompts']}")
    sweep = results.get("sweep")
    if sweep:
        print(f"\nsweep: {sweep['reuse']['jobs']} generation-only jobs on the demo model "
              f"(tracking {'on' if sweep['tracking'] else 'off'}), wall time of the whole command")
        for name in ("reuse", "no_reuse"):
            figures = sweep[name]
            print(f"  {name:<9} {figures['wall_s']:6.2f} s, {figures['weights_loads']} load(s); one load + the "
                  f"executes {figures['one_load_plus_executes_s']:.2f} s; ratio {figures['ratio_wall_to_floor']:.2f} "
                  f"(target <= {SWEEP_TARGET_RATIO}: {'met' if figures['meets_target'] else 'MISSED'}); other stages "
                  f"{sum(figures['other_stages_s']):.2f} s, outside the stages {figures['outside_stages_s']:.2f} s")
        if len(sweep["reuse"]["ratios_of_all_repeats"]) > 1:
            print(f"  (reuse: the run of median ratio of {len(sweep['reuse']['ratios_of_all_repeats'])}; all ratios "
                  + ", ".join(f"{r:.2f}" for r in sweep["reuse"]["ratios_of_all_repeats"]) + ")")
        print(f"  reuse is {sweep['speedup_from_reuse']:.2f}x faster than reloading in each job")
    if results.get("cache"):
        print_cache(results["cache"])


def log_to_mlflow(results: dict, out: Path) -> Optional[str]:
    from pipeline.core.config import TrackingConfig
    from pipeline.tracking.runs import Tracker

    tracker = Tracker(TrackingConfig(experiment="bench"))  # runs/mlflow.db under the launch folder
    tracker.start(run_name=out.stem, tags={"run_type": "bench"})
    metrics: dict[str, float] = {} if results["plan"].get("skipped") else {
        "plan/ours_s": results["plan"]["median_s"]["ours"]}
    for figures in results["execute"]:
        label = figures["model"]
        metrics[f"{label}/plain_tokens_per_second"] = figures["plain_loop"]["tokens_per_second"]
        metrics[f"{label}/ours_tokens_per_second"] = figures["ours"]["tokens_per_second"]
        metrics[f"{label}/ratio_ours_to_plain"] = figures["ratio_ours_to_plain"]
        for index, best in enumerate(figures["best"]):
            if "error" not in best:
                metrics[f"{label}/best{index}_tokens_per_second"] = best["tokens_per_second"]
    if results.get("server") and not results["server"].get("skipped"):
        for name in ("plain_asyncio", "ours"):
            metrics[f"server/{name}_tokens_per_second"] = results["server"][name]["tokens_per_second"]
        metrics["server/ratio_ours_to_plain"] = results["server"]["ratio_ours_to_plain"]
        if "ratio_ours_to_lm_eval_generate" in results["server"].get("lm_eval", {}):
            metrics["server/ratio_ours_to_lm_eval_generate"] = results["server"]["lm_eval"]["ratio_ours_to_lm_eval_generate"]
    for name, arm in results.get("vllm", {}).get("arms", {}).items():
        metrics[f"vllm/{name}_generate_s"] = arm["median_generate_s"]
        metrics[f"vllm/{name}_wall_s"] = arm["median_wall_s"]
        if "ratio_generate_to_direct" in arm:
            metrics[f"vllm/{name}_ratio_generate_to_direct"] = arm["ratio_generate_to_direct"]
    if results.get("cache"):
        metrics["cache/ratio_second_to_first_wall"] = results["cache"]["ratio_second_to_first_wall"]
        metrics["cache/ratio_second_to_first_execute"] = results["cache"]["ratio_second_to_first_execute"]
    if results.get("startup"):
        for name, figures in results["startup"]["ours"].items():
            metrics[f"startup/{name}_s"] = figures["wall_s"]
    if results.get("per_sample"):
        for name in ("off", "on"):
            metrics[f"per_sample/{name}_ms"] = results["per_sample"][name]["ms_per_sample"]
    if results.get("contention"):
        metrics["contention/ratio_wall"] = results["contention"]["ours_ratio_wall"]
    if results.get("sweep"):
        for name in ("reuse", "no_reuse"):
            metrics[f"sweep/{name}_wall_s"] = results["sweep"][name]["wall_s"]
            metrics[f"sweep/{name}_ratio"] = results["sweep"][name]["ratio_wall_to_floor"]
    tracker.log_metrics(metrics)
    tracker.log_artifact(out)
    tracker.finish("FINISHED")
    return tracker.run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs and one pass each (for the test suite)")
    parser.add_argument("--out", type=Path, help="JSON file to write (default runs/bench/bench-<time>.json)")
    parser.add_argument("--device", default="auto", help="runtime.device for the execute benchmarks (default auto)")
    parser.add_argument("--dtype", default="auto", help="runtime.dtype for the execute benchmarks (default auto)")
    parser.add_argument("--tracking", choices=("on", "off"), default="on",
                        help="log the figures to MLflow and track the sweep jobs (default on)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--only", nargs="*", choices=PARTS, help="run just these parts (e.g. --only startup "
                        "per-sample contention: the run around the model, see bench_startup.py)")
    parser.add_argument("--samples", type=int, help="samples of the per-sample part (default 100000, 2000 with --quick)")
    parser.add_argument("--choices-questions", type=int, default=200,
                        help="questions of the multiple-choice part against lm-eval (4 choices each; default 200)")
    parser.add_argument("--traces", action="store_true", help="also measure MLflow trace logging (2 x repeats demo runs)")
    parser.add_argument("--lm-eval", metavar="PYTHON", help="the interpreter of a venv with lm_eval[api] installed: "
                        "also run lm-evaluation-harness's local-chat-completions on the server part's server and data")
    parser.add_argument("--repeats", type=int, help="repeats of each measurement (default 5, 1 with --quick)")
    args = parser.parse_args()
    if args.only is not None:
        args.skip = [part for part in PARTS if part not in args.only]
    quick, tracking = args.quick, args.tracking == "on"
    repeats = args.repeats or (1 if quick else 5)
    base = [f"runtime.device={args.device}", f"runtime.dtype={args.dtype}"]
    best = [["runtime.batch_size=auto"]]
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "repeats": repeats, "quick": quick, "execute": []}
    import torch

    results["machine"]["torch"] = torch.__version__
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if cuda:
        results["machine"]["gpu"] = torch.cuda.get_device_name(0)
        best = [["runtime.batch_size=auto", "runtime.max_batch_size=256"],
                ["runtime.batch_size=auto", "runtime.max_batch_size=256", "runtime.compile=true"],
                ["runtime.continuous_batching=true"]]
    out = args.out or Path("runs") / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part, so a run cut short keeps what it measured
        out.write_text(json.dumps(results, indent=2) + "\n")

    results["plan"] = bench_plan(repeats if not quick else 1) if "plan" not in args.skip else {"skipped": True}
    save()
    if "startup" not in args.skip:
        results["startup"] = bench_startup.bench_startup(repeats, 16 if quick else None)
        save()
    if "contention" not in args.skip:
        results["contention"] = bench_startup.bench_contention(1 if quick else min(repeats, 3), 16 if quick else None)
        save()
    if args.traces:
        results["traces"] = bench_traces(repeats)
        save()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        if "per-sample" not in args.skip:
            results["per_sample"] = bench_startup.bench_per_sample(args.samples or (2000 if quick else 100_000), scratch)
            save()
        if "execute" not in args.skip:
            results["execute"].append(bench_execute("demo", "demo", base, 16 if quick else 200, 16, repeats, best,
                                                    scratch))
            save()
        if "large" not in args.skip and "execute" not in args.skip:
            large = build_large_model(scratch / "large", *((192, 2, 768) if quick else (768, 12, 2560)))
            results["execute"].append(bench_execute("random-llama-large" if not quick else "random-llama-small",
                                                    str(large), base, 16 if quick else 200 if cuda else 64, 16,
                                                    repeats, best, scratch))
            save()
        if "server" not in args.skip:
            from pipeline.backends.openai.local_server import serving_extra_missing

            missing = serving_extra_missing()  # a figure we cannot take is said, not a failure of the bench
            results["server"] = {"skipped": missing} if missing else bench_server(
                8 if quick else 200, SERVER_CONCURRENCY, repeats, scratch, args.lm_eval)
            save()
        if "choices" not in args.skip:
            from bench_choices import bench_choices

            try:  # lm-eval's own interpreter (--lm-eval), or this one
                results["choices"] = bench_choices(scratch / "choices", 4 if quick else args.choices_questions,
                                                   "cuda" if cuda else "cpu", 16, args.lm_eval,
                                                   build_large_model(scratch / "choices-model", 192, 2, 768) if quick
                                                   else None)
            except Exception as error:  # a figure we cannot take is said, not a failure of the bench
                results["choices"] = {"error": f"{type(error).__name__}: {error}"[:800]}
            save()
        if "vllm" not in args.skip:
            from bench_vllm import bench_vllm

            results["vllm"] = bench_vllm(scratch / "vllm", 8 if quick else 64, 8 if quick else 32,
                                         1 if quick else min(repeats, 3), args.lm_eval,
                                         build_large_model(scratch / "vllm-model", 192, 2, 768) if quick else None)
            save()
        if "cache" not in args.skip:
            results["cache"] = bench_cache(16 if quick else 200, repeats, scratch)
            save()
        if "sweep" not in args.skip:
            results["sweep"] = bench_sweep(2 if quick else 8, 4 if quick else 200, base, tracking and not quick, scratch,
                                           1 if quick else 3)
    save()
    print_report(results)
    print(f"\nfigures written to {out}")
    if tracking:
        print(f"mlflow    run {log_to_mlflow(results, out)} in experiment 'bench' (runs/mlflow.db)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
