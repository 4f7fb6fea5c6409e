"""The plan's choice of the transformers backend's speed options: compile, KV cache, continuous batching, threads.

`torch.compile` of the decoding step (with a static KV cache, which it needs) pays a compile of tens
of seconds on first use for faster steps after; on the CPU it does not pay, and a short run never
earns it back. `runtime.compile=auto` therefore compiles only on CUDA, without offloading, when
the run decodes enough steps (batches x max_new_tokens) to repay it. Continuous batching
(transformers' `generate_batch`, paged attention) is taken only when asked, and refused where it
would change results: sampling (its single random stream breaks per-sample seeds), stop strings
and tools (it has no stopping criteria or tool loop). Every choice comes with its reason.

It decides only; pipeline.backends.transformers.generate applies the options.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.backends.transformers.threads import choose_threads
from pipeline.core.config import Config
from pipeline.core.errors import UserError

COMPILE_MIN_DECODE_STEPS = 2048  # below this many decoding steps a compile costs more than it saves


def choose_backend_options(config: Config, device: str, offload: str, batch_size: int,
                           completions: int) -> tuple[dict[str, Any], dict[str, str]]:
    """({compile, cache_implementation, continuous_batching, threads}, reasons) for this run."""
    runtime, generation = config.runtime, config.generation
    reasons: dict[str, str] = {}
    steps = math.ceil(completions / batch_size) * generation.max_new_tokens
    if runtime.compile == "auto":
        compile_ = device.startswith("cuda") and offload == "none" and steps >= COMPILE_MIN_DECODE_STEPS
        if not device.startswith("cuda"):
            reasons["compile"] = f"auto: off on {device} (compiling costs more than it saves there)"
        elif offload != "none":
            reasons["compile"] = "auto: off, the weights are offloaded"
        else:
            reasons["compile"] = (f"auto: {steps} decoding steps ({'at least' if compile_ else 'fewer than'} "
                                  f"{COMPILE_MIN_DECODE_STEPS}, what repays the compile)")
    else:
        compile_ = bool(runtime.compile)
        reasons["compile"] = f"runtime.compile={str(runtime.compile).lower()}"
    if compile_ and runtime.cache_implementation == "dynamic":
        raise UserError("runtime.compile=true needs a static KV cache: set runtime.cache_implementation=static "
                        "(or null) or runtime.compile=false")
    cache = runtime.cache_implementation or ("static" if compile_ else "dynamic")
    reasons["cache_implementation"] = (f"runtime.cache_implementation={runtime.cache_implementation}"
                                       if runtime.cache_implementation else
                                       "null: static, which compiling needs" if compile_ else
                                       "null: dynamic (grows with the sequence; no compile to feed)")
    if runtime.continuous_batching:
        _check_continuous(config)
        reasons["continuous_batching"] = "runtime.continuous_batching=true: all prompts go to generate_batch at once"
    else:
        reasons["continuous_batching"] = "off: batches of similar prompt length through generate"
    threads, reasons["threads"] = choose_threads(runtime.threads)
    return ({"compile": compile_, "cache_implementation": cache, "continuous_batching": runtime.continuous_batching,
             "threads": threads}, reasons)


def _check_continuous(config: Config) -> None:
    generation = config.generation
    why = ("generation.temperature>0: its single random stream would break per-sample seeds"
           if not generation.greedy else
           "generation.stop: it has no stop strings" if generation.stop else
           "generation.repetition_penalty: it applies none" if generation.repetition_penalty not in (None, 1.0) else
           "session.tools: it has no tool loop" if config.session.tools else None)
    if why:
        raise UserError(f"runtime.continuous_batching=true cannot run with {why}; set runtime.continuous_batching=false")
