"""The most memory a run has used: CUDA's max allocated on a GPU, the process's peak RSS otherwise.

The two are different things and the summary says which it holds (peak_memory_kind):
- cuda_max_allocated: tensors on the GPU since `reset_peak_memory` (called before load), not
  counting the CUDA context or the caching allocator's spare blocks;
- process_peak_rss: the whole process's resident memory at its highest since the process started
  (Python, libraries, weights, activations). Linux and macOS cannot reset it, so in a sweep whose
  jobs share one process (the default in_process launcher) it is the peak of this job and those before it.
Shared by the kinds that run a model in this process (transformers, vllm); estimating what a run will
need is each kind's plan's job, not this module's.
"""

from __future__ import annotations

import sys
from typing import Optional


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: str) -> tuple[Optional[int], str]:
    """(bytes, kind) of the peak since the reset (CUDA) or since the process started (anything else)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # Windows
        return None, ""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024), "process_peak_rss"  # bytes on macOS, KiB on Linux
