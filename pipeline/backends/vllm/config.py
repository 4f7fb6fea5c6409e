"""The settings of `backend=vllm` (conf/backend/vllm.yaml): vLLM's own engine options, under vLLM's own names.

Each field is an argument of `vllm.LLM(...)` (vLLM's EngineArgs); None leaves the choice to the plan
(pipeline.backends.vllm.kind), which records what it chose and why. `validate` refuses a value vLLM would
refuse, with the key's full name, before the engine (tens of seconds, GBs of memory) starts. No vLLM import:
the settings are checked on machines without it too. Not here: the run's generation settings (generation.*),
the model reference (runtime.model), or how the engine is driven (pipeline.backends.vllm.backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pipeline.core.errors import ConfigError

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class VllmSettings:
    """vLLM's engine options for this run (backend.<name>=... on the command line)."""

    # share of the device's memory the engine may take: the GPU's, or on vLLM's CPU build the machine's RAM
    # (checked against what is free when the engine starts)
    gpu_memory_utilization: float = 0.9
    # bytes kept for the KV cache; null: on the CPU the plan sizes it for max_num_seqs full sequences (vLLM
    # then skips its warm-up and its check against gpu_memory_utilization), on a GPU vLLM sizes it from what is left
    kv_cache_memory_bytes: Optional[int] = None
    max_model_len: Optional[int] = None  # tokens, prompt and answer together; null: the model's context length
    max_num_seqs: Optional[int] = None  # sequences the engine schedules at once; null: runtime.batch_size
    max_num_batched_tokens: Optional[int] = None  # tokens in one scheduler step; null: vLLM's default
    tensor_parallel_size: int = 1  # GPUs the model is split over
    dtype: str = "auto"  # auto: the checkpoint's dtype (float32 on the CPU for half-precision weights: vLLM's rule)
    enforce_eager: Optional[bool] = None  # no CUDA graphs or torch.compile; null: true on the CPU (faster start)
    enable_prefix_caching: Optional[bool] = None  # reuse the KV cache of shared prompt prefixes; null: vLLM's default
    seed: int = 0  # the engine's seed; a request's own seed decides its sampling (per-request seeds)

    def validate(self) -> "VllmSettings":
        _check(_number(self.gpu_memory_utilization) and 0 < self.gpu_memory_utilization <= 1,
               "gpu_memory_utilization", self.gpu_memory_utilization, "a fraction in (0, 1]")
        for key in ("kv_cache_memory_bytes", "max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, key)
            _check(value is None or (_integer(value) and value >= 1), key, value, "an integer >= 1, or null")
        _check(_integer(self.tensor_parallel_size) and self.tensor_parallel_size >= 1, "tensor_parallel_size",
               self.tensor_parallel_size, "an integer >= 1")
        _check(self.dtype in DTYPES, "dtype", self.dtype, ", ".join(DTYPES))
        for key in ("enforce_eager", "enable_prefix_caching"):
            value = getattr(self, key)
            _check(value is None or isinstance(value, bool), key, value, "true, false or null")
        _check(_integer(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        return self


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"backend.{key}", value, allowed)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
