"""How many CPU threads torch uses in this process (`runtime.threads`), chosen in the plan, applied at load.

torch starts as many intra-op threads as the machine has cores, whatever share of them this
process gets. On a machine where other work holds some cores (a laptop is rarely idle) each
parallel region then waits for its slowest thread, which waits for a core: the demo's execute
stage went from 0.4 s to 17 s. The default is therefore the cores this process may run on
(os.sched_getaffinity: what `taskset` or a container's cpuset leaves it), and OpenMP's workers
sleep instead of spinning when they have nothing to do (OMP_WAIT_POLICY=PASSIVE, set in this
package's __init__, before torch is imported), so idle workers do not take cores from busy ones.
"""

from __future__ import annotations

import os
from typing import Optional


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), or the machine's where that is not known."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def choose_threads(threads: Optional[int]) -> tuple[int, str]:
    """(threads, reason) for runtime.threads: the value given, or the usable cores."""
    if threads is not None:
        return threads, f"runtime.threads={threads}"
    cores = usable_cores()
    return cores, f"null: the {cores} core(s) this process may run on (its CPU affinity)"


def apply_threads(threads: int) -> int:
    """Set torch's intra-op threads (and inter-op, where torch still allows it); torch's count after."""
    import torch

    torch.set_num_threads(threads)
    try:  # allowed once, before any inter-op work: a later job of the same process keeps the first value
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    return torch.get_num_threads()
