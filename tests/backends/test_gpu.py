"""On a CUDA GPU: what the plan picks there, and a short greedy run that writes the CPU's answers.

Marked `gpu` and skipped, with the reason, where torch sees no CUDA device (CI, most laptops):
`pytest -m gpu` runs it alone on a machine that has one. The demo model keeps it to seconds.
"""

from __future__ import annotations

import pytest

from pipeline.backends.transformers import reuse
from tests.helpers.planning import plan_in_process
from pipeline.core.config import ASSETS_DIR, GenerationConfig, TrackingConfig
from pipeline.core.transcript import read_transcript
from pipeline.run.runner import run
from pipeline.stages.resolve import resolve
from tests.conftest import DEMO_DATASET, make_config

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device (torch.cuda.is_available() is false)")]
DEMO_MODEL = ASSETS_DIR / "demo_model"
SAMPLES = 24


@pytest.fixture(autouse=True)
def _nothing_held():
    reuse.release()  # a model kept from another test (another device) is let go, and so is ours
    yield
    reuse.release()


def demo_config(device: str, dtype: str = "auto"):
    config = make_config(DEMO_MODEL, DEMO_DATASET, generation=GenerationConfig(), tracking=TrackingConfig(enabled=False))
    config.runtime.device, config.runtime.dtype, config.runtime.batch_size = device, dtype, 8
    config.dataset.limit = SAMPLES
    return config


def test_the_plan_on_a_gpu_picks_cuda_half_precision_and_its_attention():
    config = demo_config("auto")
    plan = plan_in_process(config)[0]
    assert plan.device.startswith("cuda"), plan.reasons["device"]
    assert plan.dtype == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16"), plan.reasons["dtype"]
    try:
        import flash_attn  # noqa: F401
        flash = True
    except ImportError:
        flash = False
    assert plan.backend_options["attn_implementation"] == ("flash_attention_2" if flash else "sdpa"), plan.reasons
    assert plan.backend_options["offload"] == "none", plan.reasons["offload"]  # 2 MB of weights fit any GPU
    assert plan.backend_options["compile"] is False  # a short run: compiling would cost more than it saves
    assert plan.backend_options["cache_implementation"] == "dynamic"


def answers(tmp_path, name: str, device: str, dtype: str = "auto") -> list[tuple]:
    run(demo_config(device, dtype), tmp_path / name)
    return [(r["sample_id"], r["response"], r["completion_tokens"], r["finish_reason"], r["score"])
            for r in read_transcript(tmp_path / name / "transcript.jsonl")]


def test_a_short_greedy_run_on_the_gpu_writes_the_cpu_answers(tmp_path):
    cpu = answers(tmp_path, "cpu", "cpu")
    assert answers(tmp_path, "cuda-fp32", "cuda", "float32") == cpu
    half = answers(tmp_path, "cuda-auto", "cuda")  # bf16/fp16: a rare last-bit difference may change a token
    assert [a[0] for a in half] == [a[0] for a in cpu]
    assert sum(a[4] for a in half) / SAMPLES >= 0.9  # the README's greedy floor for the demo model
