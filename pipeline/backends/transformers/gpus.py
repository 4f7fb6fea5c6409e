"""What the plan needs to know about NVIDIA GPUs, asked of the driver (NVML) without importing torch.

Importing a CUDA build of torch takes seconds on a cold machine, and the plan only needs how many
GPUs CUDA will show and, per GPU, its name, total and free memory and compute capability
(bfloat16 needs 8.0 or newer, what torch.cuda.is_bf16_supported checks). This module reads them
from libnvidia-ml.so.1 through ctypes and applies CUDA_VISIBLE_DEVICES the way CUDA does (indices
or GPU-<uuid> prefixes, an empty value hides every GPU, the first invalid entry ends the list), so
`cuda:0` here is the device torch will pick.

Where its answer could differ from torch's it answers None and the caller asks torch instead: no
NVML or CUDA driver library, an NVML error, a GPU in MIG mode, CUDA_VISIBLE_DEVICES entries it
cannot map (MIG-..., repeated devices), GPUs of different models under CUDA's default
fastest-first order, or an installed torch that is not a CUDA build or needs a newer CUDA than the
driver supports. It does not cover AMD (ROCm) or Apple GPUs, and it allocates nothing: free
memory is what the driver reports now, before this run's own CUDA context exists.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

NVML_ERROR_NOT_SUPPORTED = 3
NVML_DEVICE_MIG_ENABLE = 1
BUFFER_SIZE = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE, also enough for a UUID


class NvmlError(Exception):
    """An NVML call returned something other than NVML_SUCCESS."""


class _Memory(ctypes.Structure):  # nvmlMemory_t
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


@dataclass(frozen=True)
class Gpu:
    index: int  # as in cuda:<index>, after CUDA_VISIBLE_DEVICES
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.capability[0] >= 8


def visible_gpus() -> Optional[list[Gpu]]:
    """The GPUs CUDA will show this process, in its order; None when only torch can tell."""
    torch_cuda = torch_cuda_major()
    nvml = _nvml() if torch_cuda is not None else None
    if nvml is None:
        return None
    try:
        if torch_cuda > _driver_cuda_major(nvml):
            return None  # torch would find CUDA unusable here; let it say so
        handles = [_handle(nvml, i) for i in range(_count(nvml))]
        if any(_mig_enabled(nvml, handle) for handle in handles):
            return None  # CUDA then shows MIG instances, not whole GPUs
        physical = [_describe(nvml, i, handle) for i, handle in enumerate(handles)]
    except (NvmlError, AttributeError):  # AttributeError: a driver too old to have the function
        return None
    if os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and len({(g.name, g.capability) for g in physical}) > 1:
        return None  # CUDA's default order puts the fastest first; NVML counts in PCI bus order
    order = visible_order(os.environ.get("CUDA_VISIBLE_DEVICES"), [g.uuid for g in physical])
    return None if order is None else [replace(physical[p], index=i) for i, p in enumerate(order)]


def device_gpu(device: str) -> Optional[Gpu]:
    """The GPU behind a planned device ("cuda" is cuda:0, torch's current device); None when only torch can tell."""
    gpus = visible_gpus()
    index = int(device.split(":")[1]) if ":" in device else 0
    return gpus[index] if gpus is not None and index < len(gpus) else None


def visible_order(value: Optional[str], uuids: list[str]) -> Optional[list[int]]:
    """The physical GPUs CUDA shows for CUDA_VISIBLE_DEVICES=value, in order; None for what it cannot map."""
    if value is None:
        return list(range(len(uuids)))
    by_uuid = value.strip().startswith("GPU-")  # CUDA reads one kind: every entry an index, or every one a UUID
    order: list[int] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry.startswith("MIG-"):
            return None
        if by_uuid:
            matches = [i for i, uuid in enumerate(uuids) if entry.startswith("GPU-") and uuid.startswith(entry)]
            index = matches[0] if len(matches) == 1 else None  # an ambiguous prefix is invalid too
        else:
            digits = re.match(r"\d+", entry)  # read like strtoul, as CUDA does: "1x" is 1
            index = int(digits.group()) if digits and int(digits.group()) < len(uuids) else None
        if index is None:
            break  # the first invalid entry ends the list
        if index in order:
            return None  # a repeated device: CUDA then shows none (as torch reads it); let torch say so
        order.append(index)
    return order


def torch_cuda_major() -> Optional[int]:
    """The CUDA major version the installed torch was built for, read from torch/version.py without importing it."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None
    found = re.search(r"^cuda\b[^=\n]*=\s*['\"](\d+)\.", text, re.MULTILINE)  # cuda: Optional[str] = '12.8'
    return int(found.group(1)) if found else None


@functools.lru_cache(maxsize=1)
def _nvml() -> Optional[Any]:
    """NVML, loaded and initialised once per process (a shutdown would make the next plan pay the init again)."""
    try:
        ctypes.CDLL("libcuda.so.1")  # torch needs the CUDA driver itself, not only NVML
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        _check(nvml.nvmlInit_v2())
    except (OSError, AttributeError, NvmlError):
        return None
    return nvml


def _check(code: int) -> None:
    if code != 0:
        raise NvmlError(f"NVML error {code}")


def _driver_cuda_major(nvml: Any) -> int:
    version = ctypes.c_int()
    _check(nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.pointer(version)))
    return version.value // 1000  # 12040 is CUDA 12.4


def _count(nvml: Any) -> int:
    count = ctypes.c_uint()
    _check(nvml.nvmlDeviceGetCount_v2(ctypes.pointer(count)))
    return count.value


def _handle(nvml: Any, index: int) -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    _check(nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.pointer(handle)))
    return handle


def _mig_enabled(nvml: Any, handle: ctypes.c_void_p) -> bool:
    current, pending = ctypes.c_uint(), ctypes.c_uint()
    code = nvml.nvmlDeviceGetMigMode(handle, ctypes.pointer(current), ctypes.pointer(pending))
    if code == NVML_ERROR_NOT_SUPPORTED:  # a GPU without MIG
        return False
    _check(code)
    return current.value == NVML_DEVICE_MIG_ENABLE


def _describe(nvml: Any, index: int, handle: ctypes.c_void_p) -> Gpu:
    name, uuid = ctypes.create_string_buffer(BUFFER_SIZE), ctypes.create_string_buffer(BUFFER_SIZE)
    _check(nvml.nvmlDeviceGetName(handle, name, ctypes.c_uint(BUFFER_SIZE)))
    _check(nvml.nvmlDeviceGetUUID(handle, uuid, ctypes.c_uint(BUFFER_SIZE)))
    memory = _Memory()
    _check(nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.pointer(memory)))
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.pointer(major), ctypes.pointer(minor)))
    return Gpu(index=index, name=name.value.decode(), uuid=uuid.value.decode(), total_bytes=memory.total,
               free_bytes=memory.free, capability=(major.value, minor.value))


def accelerators() -> tuple[bool, bool, int]:
    """(CUDA available, MPS available, CUDA device count), without importing torch for a CPU-only build or NVML."""
    try:
        cpu_only_build = "+cpu" in metadata.version("torch") and sys.platform != "darwin"
    except metadata.PackageNotFoundError:
        cpu_only_build = False
    if cpu_only_build:
        return False, False, 0
    gpus = visible_gpus()  # NVML answers as CUDA would, without the seconds a CUDA torch import takes
    if gpus is not None:
        return bool(gpus), False, len(gpus)
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return cuda, mps, torch.cuda.device_count() if cuda else 0


def cuda_bf16_supported() -> bool:
    """torch's answer, for when NVML could not tell (the import takes seconds on a CUDA build)."""
    import torch

    return bool(torch.cuda.is_bf16_supported())
