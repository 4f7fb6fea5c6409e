"""pipeline.backends.transformers.gpus against a fake NVML: what it reads, CUDA_VISIBLE_DEVICES, and when the plan
must ask torch instead."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

import pipeline.backends.transformers.plan as plan_stage
from pipeline.backends.transformers import gpus
from pipeline.backends.transformers.memory import free_memory
from pipeline.core.config import RuntimeConfig

GiB = 2**30
H100 = {"name": "NVIDIA H100 80GB HBM3", "total": 80 * GiB, "capability": (9, 0)}
V100 = {"name": "Tesla V100-SXM2-16GB", "total": 16 * GiB, "capability": (7, 0)}


class FakeNvml:
    """Answers the NVML calls gpus.py makes, through the same ctypes pointers, for a list of GPUs."""

    def __init__(self, devices: list[dict], driver: int = 12040, failing: str = ""):
        self.devices, self.driver = devices, driver
        if failing:  # that call returns an NVML error (999: unknown)
            setattr(self, failing, lambda *args: 999)

    def device(self, handle):
        return self.devices[handle.value - 1]

    def nvmlSystemGetCudaDriverVersion_v2(self, version):
        version.contents.value = self.driver
        return 0

    def nvmlDeviceGetCount_v2(self, count):
        count.contents.value = len(self.devices)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        handle.contents.value = index.value + 1
        return 0

    def nvmlDeviceGetMigMode(self, handle, current, pending):
        if "mig" not in self.device(handle):
            return gpus.NVML_ERROR_NOT_SUPPORTED
        current.contents.value = pending.contents.value = self.device(handle)["mig"]
        return 0

    def nvmlDeviceGetName(self, handle, buffer, size):
        buffer.value = self.device(handle)["name"].encode()
        return 0

    def nvmlDeviceGetUUID(self, handle, buffer, size):
        buffer.value = self.device(handle)["uuid"].encode()
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, memory):
        memory.contents.total, memory.contents.free = self.device(handle)["total"], self.device(handle)["free"]
        memory.contents.used = memory.contents.total - memory.contents.free
        return 0

    def nvmlDeviceGetCudaComputeCapability(self, handle, major, minor):
        major.contents.value, minor.contents.value = self.device(handle)["capability"]
        return 0


def two_h100s(**extra) -> list[dict]:
    return [{**H100, "uuid": "GPU-aaaa1111", "free": 70 * GiB, **extra},
            {**H100, "uuid": "GPU-bbbb2222", "free": 12 * GiB, **extra}]


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake NVML (call with its devices) and a torch built for CUDA 12; CUDA_* variables unset."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setattr(gpus, "torch_cuda_major", lambda: 12)

    def install(devices: list[dict], **options) -> None:
        monkeypatch.setattr(gpus, "_nvml", lambda: FakeNvml(devices, **options))
    return install


def test_count_names_memory_and_compute_capability_are_read(nvml):
    nvml(two_h100s())
    found = gpus.visible_gpus()
    assert [(g.index, g.uuid, g.free_bytes, g.total_bytes) for g in found] == [
        (0, "GPU-aaaa1111", 70 * GiB, 80 * GiB), (1, "GPU-bbbb2222", 12 * GiB, 80 * GiB)]
    assert found[0].name == "NVIDIA H100 80GB HBM3" and found[0].capability == (9, 0) and found[0].bf16
    assert gpus.device_gpu("cuda:1").free_bytes == 12 * GiB and gpus.device_gpu("cuda").index == 0
    assert gpus.device_gpu("cuda:2") is None
    nvml([{**V100, "uuid": "GPU-cccc", "free": 15 * GiB}])
    assert gpus.visible_gpus()[0].capability == (7, 0) and not gpus.visible_gpus()[0].bf16


def test_cuda_visible_devices_by_index_uuid_prefix_or_empty(nvml, monkeypatch):
    nvml(two_h100s())
    for value, uuids in [("1", ["GPU-bbbb2222"]), ("1,0", ["GPU-bbbb2222", "GPU-aaaa1111"]),
                         ("GPU-bbbb", ["GPU-bbbb2222"]), (" 0 , 1", ["GPU-aaaa1111", "GPU-bbbb2222"]), ("", [])]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert [(g.index, g.uuid) for g in gpus.visible_gpus()] == list(enumerate(uuids)), value
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert gpus.device_gpu("cuda:0").free_bytes == 12 * GiB  # cuda:0 is the first listed


def test_cuda_visible_devices_stops_at_the_first_invalid_entry():
    uuids = ["GPU-aaaa1111", "GPU-bbbb2222", "GPU-abcd3333"]
    assert gpus.visible_order(None, uuids) == [0, 1, 2]
    assert gpus.visible_order("2,7,0", uuids) == [2]  # 7: no such GPU
    assert gpus.visible_order("1,-1,0", uuids) == [1]
    assert gpus.visible_order("0,gpu,1", uuids) == [0]
    assert gpus.visible_order("1x,0", uuids) == [1, 0]  # read like strtoul
    assert gpus.visible_order("GPU-b,GPU-a,GPU-abcd", uuids) == [1]  # GPU-a is ambiguous
    assert gpus.visible_order("GPU-abcd,1", uuids) == [2]  # one kind per list
    assert gpus.visible_order("0,GPU-bbbb", uuids) == [0]


def test_ids_it_cannot_map_give_none(nvml, monkeypatch):
    uuids = ["GPU-aaaa1111", "GPU-bbbb2222"]
    assert gpus.visible_order("MIG-5c89e8b6-1a2b", uuids) is None
    assert gpus.visible_order("GPU-aaaa,MIG-5c89e8b6", uuids) is None
    assert gpus.visible_order("1,0,1", uuids) is None  # CUDA refuses a repeated device
    nvml(two_h100s())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-GPU-aaaa1111/1/0")
    assert gpus.visible_gpus() is None


MIXED = two_h100s()[:1] + [{**V100, "uuid": "GPU-cccc", "free": GiB}]
CANNOT_ANSWER = {"mig": (two_h100s(mig=1), {}), "old driver": (two_h100s(), {"driver": 11080}),
                 "nvml error": (two_h100s(), {"failing": "nvmlDeviceGetMemoryInfo"}), "mixed models": (MIXED, {})}


@pytest.mark.parametrize("case", sorted(CANNOT_ANSWER))
def test_what_nvml_cannot_answer_as_cuda_would_gives_none(nvml, monkeypatch, case):
    devices, options = CANNOT_ANSWER[case]
    nvml(devices, **options)
    assert gpus.visible_gpus() is None
    nvml(two_h100s(mig=0) if case == "mig" else devices)  # MIG supported but off; a driver for CUDA 12; no error
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # then CUDA counts as NVML does, models mixed or not
    assert len(gpus.visible_gpus()) == 2


def test_no_nvml_or_a_torch_without_cuda_gives_none(nvml, monkeypatch):
    nvml(two_h100s())
    monkeypatch.setattr(gpus, "torch_cuda_major", lambda: None)
    assert gpus.visible_gpus() is None
    monkeypatch.setattr(gpus, "torch_cuda_major", lambda: 12)
    monkeypatch.setattr(gpus, "_nvml", lambda: None)
    assert gpus.visible_gpus() is None


def test_the_library_missing_gives_none(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")
    monkeypatch.setattr(gpus.ctypes, "CDLL", missing)
    assert gpus._nvml.__wrapped__() is None


def test_torch_cuda_version_is_read_without_importing_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(gpus.importlib.util, "find_spec",
                        lambda name: SimpleNamespace(submodule_search_locations=[str(tmp_path)]))
    (tmp_path / "version.py").write_text("__version__ = '2.13.0+cu128'\ncuda: Optional[str] = '12.8'\n")
    assert gpus.torch_cuda_major() == 12
    (tmp_path / "version.py").write_text("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n")
    assert gpus.torch_cuda_major() is None


@pytest.fixture
def cuda_torch_build(monkeypatch):
    """Pretend the installed torch is a CUDA build (no +cpu shortcut); `torch` itself is set per test."""
    monkeypatch.setattr(gpus.metadata, "version", lambda name: "2.13.0+cu128")


def test_the_plan_takes_nvml_figures_without_torch(nvml, cuda_torch_build, monkeypatch):
    nvml(two_h100s())
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    assert plan_stage.accelerators() == (True, False, 2)
    dtype, why = plan_stage.choose_dtype(RuntimeConfig(dtype="auto"), "cuda:1")
    assert dtype == "bfloat16" and "NVIDIA H100 80GB HBM3 (compute capability 9.0, from NVML)" in why
    assert free_memory("cuda:1") == (12 * GiB, "NVML: 12.0 GiB free of 80.0 GiB on cuda:1 (NVIDIA H100 80GB HBM3)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert plan_stage.accelerators() == (False, False, 0)


def test_the_plan_asks_torch_when_nvml_cannot_answer(nvml, cuda_torch_build, monkeypatch):
    nvml(two_h100s(mig=1))
    torch = SimpleNamespace(backends=SimpleNamespace(mps=None), cuda=SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 3, is_bf16_supported=lambda: False, current_device=lambda: 0,
        mem_get_info=lambda index: (5 * GiB, 10 * GiB)))
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert plan_stage.accelerators() == (True, False, 3)
    assert plan_stage.choose_dtype(RuntimeConfig(dtype="auto"), "cuda:1") == (
        "float16", "auto: this GPU lacks bfloat16, so float16")
    assert free_memory("cuda:1") == (5 * GiB, "CUDA driver: 5.0 GiB free of 10.0 GiB on cuda:1")
