"""How much memory a run needs, and how much its device has free.

The estimate has three parts: the weights (parameters x bytes of the planned dtype), the KV cache
(2 x layers x kv_heads x head_dim x dtype bytes per token, for batch x (longest prompt +
max_new_tokens) tokens) and the prefill's transient tensors plus the logits. It is an upper
bound for standard attention; models with sliding-window or linear attention need less.
Free memory: /proc/meminfo and the cgroup limit on CPU, NVML (pipeline.backends.transformers.gpus) or else torch's
CUDA driver call on NVIDIA GPUs, Metal's recommended budget on MPS. This module decides nothing;
the plan stage does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.backends.transformers.gpus import device_gpu
from pipeline.core.records import ModelShape

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGITS_BYTES = 4  # logits are float32 whatever the model's dtype


@dataclass(frozen=True)
class Need:
    weights: int
    kv_cache: int
    kv_per_token: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations


def kv_bytes_per_token(shape: ModelShape, dtype: str) -> int:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * DTYPE_BYTES[dtype]


def need(parameters: int, shape: ModelShape, dtype: str, batch: int, prompt_tokens: int, new_tokens: int) -> Need:
    """Bytes a batch needs: weights, KV cache for prompt + new tokens, and the prefill's peak extras."""
    width = DTYPE_BYTES[dtype]
    per_token = kv_bytes_per_token(shape, dtype)
    # one layer's hidden states and MLP intermediates live at a time during the prefill
    prefill = batch * prompt_tokens * (4 * shape.hidden_size + 2 * shape.intermediate_size) * width
    logits = 2 * batch * shape.vocab_size * LOGITS_BYTES  # the last position's logits and their softmax
    return Need(weights=parameters * width, kv_cache=batch * (prompt_tokens + new_tokens) * per_token,
                kv_per_token=per_token, activations=prefill + logits)


def free_memory(device: str) -> tuple[Optional[int], str]:
    """(bytes free now on the device, where that number came from); None when it cannot be known."""
    if device.startswith("cuda"):
        gpu = device_gpu(device)
        if gpu is not None:
            return gpu.free_bytes, (f"NVML: {gpu.free_bytes / 2**30:.1f} GiB free of {gpu.total_bytes / 2**30:.1f} GiB "
                                    f"on cuda:{gpu.index} ({gpu.name})")
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return free, f"CUDA driver: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB on cuda:{index}"
    if device == "mps":
        import torch

        budget = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
        return budget, "Metal's recommended working-set size minus what is allocated"
    return free_ram()


def free_ram() -> tuple[Optional[int], str]:
    """Available RAM: the smaller of MemAvailable and what the cgroup (container) limit leaves."""
    available, source = None, "unknown: neither /proc/meminfo nor sysconf says"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available, source = int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
                break
    except OSError:
        pass
    if available is None:
        try:
            import os

            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            source = "free physical pages (sysconf)"
        except (ValueError, OSError, AttributeError):
            return None, source
    cgroup = _cgroup_room()
    if cgroup is not None and cgroup < available:
        return cgroup, "the container's cgroup memory limit minus its current use"
    return available, source


def _cgroup_room() -> Optional[int]:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
