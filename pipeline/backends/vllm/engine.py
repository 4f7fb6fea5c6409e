"""Starting and stopping a vLLM engine in this process: the only module of the kind that imports vllm at load.

vLLM's engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), not in a process it spawns: a
spawned engine re-imports the user's `__main__`, so a script without an `if __name__ == "__main__":` guard would
start itself again, and a process of ours holds no such guard for Hydra's entry point. A user's own value of that
variable is kept. `stop` lets the engine go so that a second one can start in the same process (a sweep's next job,
a judge): vLLM keeps its parallel groups and memory until told. Not here: the options (the plan chose them) or
requests (pipeline.backends.vllm.backend).
"""

from __future__ import annotations

import gc
import os
from typing import Any


def start(model_path: str, options: dict[str, Any]) -> Any:
    """A `vllm.LLM` over a local model folder with the plan's engine options."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from vllm import LLM

    # vLLM's CPU worker replaces torch.set_num_threads, for the whole process and for good, with a function that
    # only warns (it has bound its threads to cores); the rest of this process (a transformers model beside it,
    # the next job of a sweep) keeps torch as it was
    set_num_threads = torch.set_num_threads
    # vLLM's CPU platform adds PyTorch's libgomp and its own tcmalloc to LD_PRELOAD, for the engine processes it
    # would spawn; ours spawns none, and every process this one starts later (the plots, a sweep's workers, a
    # server) would inherit them, so the variable is put back as it was
    preload = os.environ.get("LD_PRELOAD")
    try:
        return LLM(model=model_path, **options)
    finally:
        torch.set_num_threads = set_num_threads
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload


def stop(llm: Any) -> None:
    """Shut the engine down and free what vLLM holds for it (its distributed groups, cached memory)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm, core
    gc.collect()
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:  # a vLLM without the helper: the garbage collector has done what it can
        return
    cleanup_dist_env_and_memory()
