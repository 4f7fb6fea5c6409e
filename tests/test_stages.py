"""Each stage on its own, on a tiny random model: resolve, plan, load, execute, summarize."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import write_jsonl
from pipeline.config import Config, DatasetConfig, GenerationConfig, RuntimeConfig, SessionConfig
from pipeline.dataset import load_samples
from pipeline.errors import UserError
from pipeline.stages.execute import _completion, execute
from pipeline.stages.load import load, load_tokenizer
from pipeline.stages.plan import plan
from pipeline.stages.resolve import resolve
from pipeline.stages.summarize import percentile, summarize
from pipeline.transcript import TranscriptWriter, read_transcript
from tiny_model import build_tiny_model


def make_config(model: Path, dataset: Path, **sections) -> Config:
    config = Config(runtime=RuntimeConfig(model=str(model), device="cpu", batch_size=2),
                    dataset=DatasetConfig(path=str(dataset)))
    for name, value in sections.items():
        setattr(config, name, value)
    return config


# --- resolve ---------------------------------------------------------------------------------

def test_resolve_reads_the_model_folder_without_loading(tiny_model):
    resolved = resolve(RuntimeConfig(model=str(tiny_model)))
    assert resolved.kind == "path" and resolved.path == str(tiny_model)
    assert resolved.architecture == "LlamaForCausalLM" and resolved.model_type == "llama"
    assert resolved.context_length == 128 and resolved.has_chat_template and resolved.has_generation_config
    assert resolved.weight_files == ["model.safetensors"] and resolved.weights_dtype == "float32"
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert resolved.parameters == real
    assert resolved.weights_digest.startswith("sha256:")


def test_alias_and_user_alias(tiny_model):
    assert resolve(RuntimeConfig(model="demo")).kind == "alias"
    resolved = resolve(RuntimeConfig(model="mine", aliases={"mine": str(tiny_model)}))
    assert resolved.kind == "alias" and resolved.path == str(tiny_model)


def test_same_weights_same_digest_different_weights_different_digest(tiny_model, tmp_path):
    copy = Path(shutil.copytree(tiny_model, tmp_path / "copy"))
    other = build_tiny_model(tmp_path / "other", seed=1)
    digest = resolve(RuntimeConfig(model=str(tiny_model))).weights_digest
    assert resolve(RuntimeConfig(model=str(copy))).weights_digest == digest
    assert resolve(RuntimeConfig(model=str(other))).weights_digest != digest


def broken_folder(tiny_model: Path, tmp_path: Path, breakage: str) -> Path:
    folder = Path(shutil.copytree(tiny_model, tmp_path / "broken"))
    if breakage == "no config":
        (folder / "config.json").unlink()
    elif breakage == "no weights":
        (folder / "model.safetensors").unlink()
    elif breakage == "pickle only":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif breakage == "remote code":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling.Model"}
        (folder / "config.json").write_text(json.dumps(config))
    elif breakage == "bad json":
        (folder / "config.json").write_text("{nope")
    elif breakage == "corrupt weights":
        (folder / "model.safetensors").write_bytes(b"\xff" * 16)
    return folder


@pytest.mark.parametrize("breakage,expected", [
    ("no config", "has no config.json"),
    ("no weights", "no weight files"),
    ("pickle only", "only pickle weights (pytorch_model.bin)"),
    ("remote code", "set runtime.trust_remote_code=true"),
    ("bad json", "is not valid JSON"),
    ("corrupt weights", "is not a readable safetensors file"),
])
def test_resolve_refuses_broken_folders(tiny_model, tmp_path, breakage, expected):
    folder = broken_folder(tiny_model, tmp_path, breakage)
    with pytest.raises(UserError) as raised:
        resolve(RuntimeConfig(model=str(folder)))
    assert expected in str(raised.value) and f"runtime.model='{folder}'" in str(raised.value)


def test_resolve_says_path_not_found(tmp_path):
    with pytest.raises(UserError, match="path not found"):
        resolve(RuntimeConfig(model=str(tmp_path / "missing")))


# --- plan ------------------------------------------------------------------------------------

def planned(model: Path, dataset: Path, **sections):
    config = make_config(model, dataset, **sections)
    resolved = resolve(config.runtime)
    samples = load_samples(config.dataset)
    tokenizer = load_tokenizer(resolved)
    return config, samples, tokenizer, plan(resolved, config, samples, tokenizer)


def test_plan_picks_cpu_fp32_and_checks_the_context(tiny_model, small_dataset):
    _, samples, tokenizer, result = planned(tiny_model, small_dataset)
    assert (result.device, result.dtype, result.backend) == ("cpu", "float32", "transformers")
    assert result.batch_size == 2 and result.num_samples == 5
    assert result.longest_prompt_tokens > 10
    assert any("fits the context of 128" in check for check in result.checks)
    assert result.estimated_weight_bytes == resolve(RuntimeConfig(model=str(tiny_model))).parameters * 4
    json.dumps(result.to_dict())  # the plan is written as JSON


def test_plan_refuses_a_prompt_longer_than_the_context(tiny_model, tmp_path):
    dataset = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "prompt": "x" * 200}])
    with pytest.raises(UserError) as raised:
        planned(tiny_model, dataset)
    assert "sample 'long'" in str(raised.value) and "context of 128 tokens" in str(raised.value)


def test_plan_counts_max_new_tokens_against_the_context(tiny_model, tmp_path):
    dataset = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "x" * 100}])
    planned(tiny_model, dataset)  # fits with 8 new tokens
    with pytest.raises(UserError, match="generation.max_new_tokens=40"):
        planned(tiny_model, dataset, generation=GenerationConfig(max_new_tokens=40))


def test_plan_refuses_a_chat_session_without_a_chat_template(tmp_path, small_dataset):
    model = build_tiny_model(tmp_path / "plain", chat_template=False)
    with pytest.raises(UserError, match="set session.chat_template=false"):
        planned(model, small_dataset)
    _, _, _, result = planned(model, small_dataset, session=SessionConfig(chat_template=False))
    assert result.num_samples == 5


def test_plan_warns_when_sampling_settings_meet_greedy(tiny_model, small_dataset):
    _, _, _, result = planned(tiny_model, small_dataset, generation=GenerationConfig(top_p=0.5))
    assert any("ignored" in warning for warning in result.warnings)


def test_plan_refuses_a_device_that_is_not_here(tiny_model, small_dataset):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = make_config(tiny_model, small_dataset)
    config.runtime.device = "cuda"
    resolved = resolve(config.runtime)
    with pytest.raises(UserError, match="runtime.device='cuda': no such device here"):
        plan(resolved, config, load_samples(config.dataset), load_tokenizer(resolved))


# --- load + execute --------------------------------------------------------------------------

def run_execute(tmp_path, tiny_model, dataset, **sections) -> list[dict]:
    config, samples, tokenizer, result = planned(tiny_model, dataset, **sections)
    runtime = load(result, tokenizer)
    path = tmp_path / f"transcript-{len(list(tmp_path.glob('transcript-*')))}.jsonl"
    with TranscriptWriter(path) as writer:
        assert execute(runtime, samples, config, writer, config.config_hash()) == len(samples)
    return read_transcript(path)


def test_execute_writes_one_complete_record_per_sample_in_order(tmp_path, tiny_model, small_dataset):
    records = run_execute(tmp_path, tiny_model, small_dataset)
    assert [r["sample_id"] for r in records] == [f"s{i}" for i in range(5)]
    assert [r["batch"] for r in records] == [0, 0, 1, 1, 2]
    for record in records:
        assert record["schema_version"] == 1 and record["status"] == "ok"
        assert record["messages"][-1]["role"] == "user" and record["reference"] is not None
        assert record["score"] in (0.0, 1.0)
        assert record["prompt_tokens"] > 10 and 1 <= record["completion_tokens"] <= 8
        assert record["finish_reason"] in ("stop", "length") and record["latency_s"] > 0
        assert len(record["config_hash"]) == 16


def test_greedy_is_deterministic_and_sampling_is_seeded(tmp_path, tiny_model, small_dataset):
    greedy = [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset)]
    assert greedy == [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset)]
    hot = GenerationConfig(temperature=2.0, seed=7)
    sampled = [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset, generation=hot)]
    again = [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset, generation=hot)]
    other = [r["response"] for r in run_execute(tmp_path, tiny_model, small_dataset,
                                                generation=GenerationConfig(temperature=2.0, seed=8))]
    assert sampled == again
    assert sampled != other and sampled != greedy


def test_system_prompt_reaches_the_model(tmp_path, tiny_model, small_dataset):
    records = run_execute(tmp_path, tiny_model, small_dataset, session=SessionConfig(system_prompt="Be exact."))
    plain = run_execute(tmp_path, tiny_model, small_dataset)
    assert records[0]["messages"][0] == {"role": "system", "content": "Be exact."}
    # character-level tokens, plus one token each for the <|system|> and <|end|> markers
    assert records[0]["prompt_tokens"] == plain[0]["prompt_tokens"] + len("Be exact.") + 2


def test_completion_cuts_at_end_of_turn_and_stop_strings(tiny_model):
    tokenizer = load_tokenizer(resolve(RuntimeConfig(model=str(tiny_model))))
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    ids = tokenizer("42 apples", add_special_tokens=False)["input_ids"]
    stopped = _completion(tokenizer, ids[:2] + [end, 0, 0], {end}, [])
    assert (stopped.text, stopped.tokens, stopped.finish_reason) == ("42", 3, "stop")
    cut = _completion(tokenizer, ids, {end}, [" app"])
    assert (cut.text, cut.finish_reason) == ("42", "stop")
    assert _completion(tokenizer, ids, {end}, []).finish_reason == "length"


# --- summarize -------------------------------------------------------------------------------

def test_summarize_on_known_records():
    records = [{"score": s, "prompt_tokens": 10, "completion_tokens": c, "latency_s": l}
               for s, c, l in [(1.0, 3, 0.1), (0.0, 3, 0.2), (1.0, 2, 0.3), (None, 4, 0.4)]]
    summary = summarize(records, {"execute": 2.0, "load": 1.0})
    assert summary.num_samples == 4 and summary.num_scored == 3
    assert summary.accuracy == pytest.approx(2 / 3) and summary.correct == 2
    assert summary.completion_tokens == 12 and summary.tokens_per_second == pytest.approx(6.0)
    assert (summary.latency_p50_s, summary.latency_p95_s) == (0.2, 0.4)
    assert summary.metrics()["accuracy"] == pytest.approx(2 / 3)


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0 and percentile([], 50) == 0.0
