"""Model reuse across the jobs of one process: a sweep loads its model once.

The default launcher runs a sweep's jobs one after another in one process, and so does each
worker of a parallel launcher (joblib keeps its workers). This module keeps the last loaded
runtime of the process and hands it to the next job when the load-relevant part of its plan
(the model's folder, commit and weights digest, device, dtype, attention, offload, compile and
cache settings, remote code) is the same; generation settings, seeds, sessions and datasets are
not part of it, since they go to every `generate` call afresh and leave nothing in the model.
When the key changes the old runtime is dropped and its memory freed (CUDA's cache included)
before the new model loads. `runtime.reuse=false` turns it off; weights offloaded to disk are
never kept (their folder belongs to the run that wrote them).

It does not load anything itself (pipeline.backends.transformers.load does) and keeps nothing across processes.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.backends.transformers.load import load
from pipeline.core.records import LoadedRuntime, RuntimePlan


@dataclass
class LoadRecord:
    """How a run got its runtime: loaded now, or reused from an earlier job of the same process."""

    reused: bool
    reused_from: Optional[str]  # the run folder that loaded it, when reused
    key: str  # digest of the load-relevant settings
    loads_in_process: int  # weights loads this process has done so far, this one included
    kept: bool  # held for the next job of this process
    reason: str
    process: int = field(default_factory=os.getpid)  # jobs of one process share what it loaded
    threads: Optional[int] = None  # torch's intra-op threads while this job ran (runtime.threads, set at load)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Held:
    key: str
    runtime: LoadedRuntime
    loaded_by: str


_held: Optional[_Held] = None
_loads = 0


def load_key(plan: RuntimePlan, trust_remote_code: bool) -> str:
    """A digest of everything that decides what `load` puts in memory."""
    model = plan.model
    relevant = {
        "path": model.path, "revision": model.revision, "commit": model.commit, "weights": model.weights_digest,
        "device": plan.device, "dtype": plan.dtype, "trust_remote_code": trust_remote_code,
        # attention, offload, max_memory, compile, ...; threads change nothing in memory: each job sets its own
        # (TransformersBackend.load), a sweep over them reuses
        "backend_options": {k: v for k, v in plan.backend_options.items() if k != "threads"},
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def acquire(plan: RuntimePlan, chat_template: Any, trust_remote_code: bool, run_dir: Path,
            reuse: bool = True) -> tuple[LoadedRuntime, LoadRecord]:
    """The runtime for this run's plan: the held one when its key matches, else a fresh load."""
    global _held, _loads
    key = load_key(plan, trust_remote_code)
    if reuse and _held is not None and _held.key == key:
        held = _held.runtime
        # what the load really used (eager fallback)
        plan.backend_options["attn_implementation"] = held.plan.backend_options["attn_implementation"]
        runtime = LoadedRuntime(plan=plan, tokenizer=held.tokenizer, model=held.model, chat_template=chat_template,
                                processor=held.processor)
        return runtime, LoadRecord(True, _held.loaded_by, key, _loads, True,
                                   "same model, revision, device, dtype and backend options as the run that loaded it")
    if _held is not None:
        why = "runtime.reuse=false" if not reuse else "the load-relevant settings changed"
        release()
    else:
        why = "no runtime loaded in this process yet" if reuse else "runtime.reuse=false"
    runtime = load(plan, chat_template, trust_remote_code, run_dir / "offload")
    _loads += 1
    keep = reuse and plan.backend_options["offload"] != "disk"
    if keep:
        _held = _Held(key, runtime, str(run_dir))
    elif reuse:
        why += "; not kept: weights offloaded to disk live in this run's folder"
    return runtime, LoadRecord(False, None, key, _loads, keep, why)


def release() -> None:
    """Drop the held runtime and give its memory back (CUDA's cached blocks too)."""
    global _held
    _held = None
    gc.collect()
    torch = sys.modules.get("torch")  # only when something imported it: freeing needs no import
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def held_key() -> Optional[str]:
    """The key of the runtime this process holds, if any."""
    return _held.key if _held is not None else None
