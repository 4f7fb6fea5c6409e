"""Plan: decisions and their reasons, the memory estimate against real allocations, every check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.backends.transformers.memory import need
from tests.helpers.planning import plan_in_process
from pipeline.core.config import GenerationConfig, RuntimeConfig, SessionConfig
from pipeline.core.errors import UserError
from pipeline.stages.resolve import resolve
from tests.conftest import make_config, write_jsonl
from tests.helpers.tiny_model import build_tiny_model


def planned(model: Path, dataset: Path, overrides: tuple[str, ...] = (), **sections):
    config = make_config(model, dataset, **sections)
    return plan_in_process(config, overrides)[0]


def test_plan_picks_cpu_fp32_sdpa_and_says_why(tiny_model, small_dataset):
    result = planned(tiny_model, small_dataset)
    assert (result.device, result.dtype, result.backend) == ("cpu", "float32", "transformers")
    assert result.backend_options["attn_implementation"] == "sdpa" and result.backend_options["offload"] == "none"
    assert result.batch_size == 2 and result.num_samples == 5 and result.longest_prompt_tokens > 10
    assert set(result.reasons) >= {"device", "dtype", "attn_implementation", "batch_size", "offload", "backend"}
    assert "float32 on the CPU" in result.reasons["dtype"]
    assert any("fits the context of 128" in check for check in result.checks)
    json.dumps(result.to_dict())  # printed and written as JSON


def test_the_same_inputs_give_the_same_plan(tiny_model, small_dataset):
    limit = RuntimeConfig(model=str(tiny_model), device="cpu", memory_limit="1GiB")
    first = planned(tiny_model, small_dataset, runtime=limit).to_dict()
    assert planned(tiny_model, small_dataset, runtime=limit).to_dict() == first


# --- memory ------------------------------------------------------------------------------------

def test_the_memory_estimate_matches_what_transformers_allocates(tiny_model, tmp_path):
    """Weights within 1%, KV cache within 5% (the estimate counts the last token's KV, never stored)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dataset = write_jsonl(tmp_path / "d.jsonl", [{"id": str(i), "prompt": "x" * 40} for i in range(4)])
    config = make_config(tiny_model, dataset, generation=GenerationConfig(max_new_tokens=20))
    config.runtime.batch_size = 4
    result = plan_in_process(config)[0]

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    real_weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert abs(result.memory.weights_bytes - real_weights) / real_weights < 0.01

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x" * 40}], add_generation_prompt=True,
                                         tokenize=False)
    inputs = tokenizer([text] * 4, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                             return_dict_in_generate=True, pad_token_id=0)
    cache = out.past_key_values
    real_kv = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
                  for layer in cache.layers)
    assert inputs["input_ids"].shape[1] == result.longest_prompt_tokens
    assert abs(result.memory.kv_cache_bytes - real_kv) / real_kv < 0.05


def test_batch_size_auto_takes_the_largest_batch_that_fits(tiny_model, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"id": str(i), "prompt": "x" * 60} for i in range(64)])
    runtime = RuntimeConfig(model=str(tiny_model), device="cpu", batch_size="auto", memory_limit="4MiB",
                            memory_margin=0.1)
    result = planned(tiny_model, dataset, runtime=runtime)
    resolved = resolve(runtime)
    usable = int(4 * 2**20 * 0.9)

    def total(batch: int) -> int:
        return need(resolved.parameters, resolved.shape, "float32", batch, result.longest_prompt_tokens, 8).total

    assert 1 < result.batch_size < 64
    assert total(result.batch_size) <= usable < total(result.batch_size + 1)
    assert result.memory.fits and result.memory.usable_bytes == usable and "auto" in result.reasons["batch_size"]
    roomy = planned(tiny_model, dataset, runtime=RuntimeConfig(model=str(tiny_model), device="cpu", batch_size="auto",
                                                                 memory_limit="1GiB", max_batch_size=32))
    assert roomy.batch_size == 32  # capped by runtime.max_batch_size


def test_a_batch_that_does_not_fit_says_so_with_the_numbers(tiny_model, small_dataset):
    resolved, prompt = resolve(RuntimeConfig(model=str(tiny_model))), planned(tiny_model, small_dataset).longest_prompt_tokens
    one, five = (need(resolved.parameters, resolved.shape, "float32", b, prompt, 8).total for b in (1, 5))
    runtime = RuntimeConfig(model=str(tiny_model), device="cpu", batch_size=5, memory_limit=str((one + five) // 2),
                            memory_margin=0)
    with pytest.raises(UserError) as raised:
        planned(tiny_model, small_dataset, runtime=runtime)
    message = str(raised.value)
    assert message.startswith("runtime.batch_size=5: the run needs") and "usable" in message and "KiB" in message
    assert "lower runtime.batch_size or set it to auto" in message


def test_weights_that_do_not_fit_are_refused_or_offloaded(tiny_model, small_dataset):
    weights = resolve(RuntimeConfig(model=str(tiny_model))).parameters * 4
    tight = dict(model=str(tiny_model), device="cpu", batch_size=1, memory_limit=str(weights // 2), memory_margin=0)
    with pytest.raises(UserError) as raised:
        planned(tiny_model, small_dataset, runtime=RuntimeConfig(**tight, offload="none"))
    assert "does not fit" in str(raised.value) and "runtime.offload=auto" in str(raised.value)
    result = planned(tiny_model, small_dataset, runtime=RuntimeConfig(**tight))
    assert result.backend_options["offload"] == "disk" and result.backend_options["max_memory"] == {"cpu": result.memory.weights_bytes}
    assert "read from disk" in result.reasons["offload"] and any("offloading" in w for w in result.warnings)
    with pytest.raises(UserError, match="runtime.offload=cpu cannot help on the CPU"):
        planned(tiny_model, small_dataset, runtime=RuntimeConfig(**tight, offload="cpu"))


# --- checks ------------------------------------------------------------------------------------

def test_a_prompt_longer_than_the_context_is_refused_or_truncated(tiny_model, tmp_path):
    dataset = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "prompt": "x" * 200}, {"id": "short", "prompt": "hi"}])
    with pytest.raises(UserError) as raised:
        planned(tiny_model, dataset)
    message = str(raised.value)
    assert "sample 'long'" in message and "context of 128 tokens" in message and "session.truncation=left" in message
    result = planned(tiny_model, dataset, session=SessionConfig(truncation="left"))
    assert result.truncated_samples == ["long"] and any("cut from the left" in w for w in result.warnings)


def test_max_new_tokens_counts_against_the_context(tiny_model, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "x" * 100}])
    planned(tiny_model, dataset)  # fits with 8 new tokens
    with pytest.raises(UserError, match="generation.max_new_tokens=40"):
        planned(tiny_model, dataset, generation=GenerationConfig(max_new_tokens=40))
    with pytest.raises(UserError, match="leaves no room for a prompt"):
        planned(tiny_model, dataset, generation=GenerationConfig(max_new_tokens=128),
                session=SessionConfig(truncation="left"))


def test_a_chat_session_needs_a_chat_template(tmp_path, small_dataset):
    model = build_tiny_model(tmp_path / "plain", chat_template=False)
    with pytest.raises(UserError, match="set session.chat_template=false"):
        planned(model, small_dataset)
    assert planned(model, small_dataset, session=SessionConfig(chat_template=False)).num_samples == 5


def test_image_parts_on_a_text_model_are_refused(tiny_model, tmp_path):
    from tests.helpers.tiny_media_models import png

    png(tmp_path / "cat.png", 1)
    dataset = write_jsonl(tmp_path / "img.jsonl", [{"id": "pic", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image", "path": "cat.png"}]}]}])
    with pytest.raises(UserError) as raised:
        planned(tiny_model, dataset)
    assert "sample 'pic' has an image part" in str(raised.value) and "takes text only" in str(raised.value)


def test_a_device_that_is_not_here_is_refused(tiny_model, small_dataset):
    from pipeline.backends.transformers.plan import accelerators

    if accelerators()[0]:
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="runtime.device='cuda': no such device here"):
        planned(tiny_model, small_dataset, runtime=RuntimeConfig(model=str(tiny_model), device="cuda"))


def test_flash_attention_needs_cuda(tiny_model, small_dataset):
    runtime = RuntimeConfig(model=str(tiny_model), device="cpu", attn_implementation="flash_attention_2")
    with pytest.raises(UserError, match="flash_attention_2 needs a CUDA device"):
        planned(tiny_model, small_dataset, runtime=runtime)


# --- effective generation settings -------------------------------------------------------------

def model_with_generation_config(tiny_model: Path, tmp_path: Path, **settings) -> Path:
    folder = Path(shutil.copytree(tiny_model, tmp_path / "gen"))
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, **settings}))
    return folder


def test_each_generation_setting_records_where_it_came_from(tiny_model, tmp_path, small_dataset):
    model = model_with_generation_config(tiny_model, tmp_path, top_k=20, repetition_penalty=1.05)
    result = planned(model, small_dataset, overrides=("generation.temperature=0.7",),
                     generation=GenerationConfig(temperature=0.7, top_p=0.9))
    values, sources = result.generation, result.generation_sources
    assert (values["temperature"], sources["temperature"]) == (0.7, "command line")
    assert (values["top_p"], sources["top_p"]) == (0.9, "config")
    assert (values["top_k"], sources["top_k"]) == (20, "model generation_config.json")
    assert (values["repetition_penalty"], sources["repetition_penalty"]) == (1.05, "model generation_config.json")
    assert (values["min_p"], sources["min_p"]) == (None, "transformers default")
    assert values["do_sample"] is True and not result.warnings


def test_contradicting_generation_settings_are_warned_about(tiny_model, tmp_path, small_dataset):
    greedy_with_top_p = planned(tiny_model, small_dataset, generation=GenerationConfig(top_p=0.5))
    assert any("top_p=0.5 set but ignored: temperature 0 decodes greedily" in w for w in greedy_with_top_p.warnings)
    sampler = model_with_generation_config(tiny_model, tmp_path, do_sample=True, temperature=0.6)
    result = planned(sampler, small_dataset)
    assert any("samples by default (temperature 0.6)" in w for w in result.warnings)
    assert result.generation["do_sample"] is False


def test_a_refused_prompt_is_named_even_when_a_conversation_is_longer(tmp_path, tiny_model):
    dataset = write_jsonl(tmp_path / "mixed.jsonl", [
        {"id": "talk", "turns": ["a" * 100, "b" * 100]},  # may outgrow the context: a warning, not a refusal
        {"id": "long", "prompt": "c" * 120},
    ])
    config = make_config(tiny_model, dataset)
    with pytest.raises(UserError, match=r"^sample 'long': prompt of \d+ tokens"):
        plan_in_process(config)


def test_on_the_cpu_a_bfloat16_checkpoint_stays_bfloat16_only_where_the_cpu_computes_it_natively():
    from pipeline.backends.transformers.plan import choose_dtype

    auto = RuntimeConfig(dtype="auto")
    kept, why = choose_dtype(auto, "cpu", "bfloat16", cpu_flags={"avx2", "avx512_bf16"})
    assert kept == "bfloat16" and "avx512_bf16" in why and "not widened" in why
    assert choose_dtype(auto, "cpu", "bfloat16", cpu_flags={"amx_bf16", "amx_tile"})[0] == "bfloat16"
    widened, why = choose_dtype(auto, "cpu", "bfloat16", cpu_flags={"avx2", "avx512f"})
    assert widened == "float32" and "no native bfloat16" in why
    assert choose_dtype(auto, "cpu", "float32", cpu_flags={"avx512_bf16"})[0] == "float32"  # fp32 stays fp32
    assert choose_dtype(auto, "cpu", "float16", cpu_flags={"avx512_bf16"})[0] == "float32"
    assert choose_dtype(RuntimeConfig(dtype="bfloat16"), "cpu", "float32", cpu_flags=set())[0] == "bfloat16"


def test_the_plan_keeps_a_bfloat16_checkpoint_on_a_cpu_with_native_bfloat16(tiny_model, small_dataset, tmp_path,
                                                                            monkeypatch):
    import torch
    from transformers import LlamaForCausalLM

    from pipeline.backends.transformers import plan as plan_stage

    bf16 = tmp_path / "bf16"
    shutil.copytree(tiny_model, bf16)
    LlamaForCausalLM.from_pretrained(tiny_model).to(torch.bfloat16).save_pretrained(bf16)
    runtime = RuntimeConfig(model=str(bf16), device="cpu", batch_size=2)
    monkeypatch.setattr(plan_stage, "_cpu_flags", lambda: {"avx2", "amx_bf16"})  # a Sapphire Rapids-like CPU
    assert planned(bf16, small_dataset, runtime=runtime).dtype == "bfloat16"
    monkeypatch.setattr(plan_stage, "_cpu_flags", lambda: {"avx2"})
    widened = planned(bf16, small_dataset, runtime=runtime)
    assert widened.dtype == "float32" and "checkpoint is bfloat16" in widened.reasons["dtype"]
    assert planned(tiny_model, small_dataset).dtype == "float32"  # a float32 checkpoint stays float32
