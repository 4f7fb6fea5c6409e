"""Resolve: every kind of model reference, the facts read from a folder, and every refusal."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from pipeline.core.digest import file_sha256
from pipeline.core.config import RuntimeConfig
from pipeline.core.errors import UserError
from pipeline.stages.resolve import looks_like_path, resolve
from tests.helpers.tiny_model import build_tiny_model


def test_resolve_reads_the_model_folder_without_loading(tiny_model):
    resolved = resolve(RuntimeConfig(model=str(tiny_model)))
    assert resolved.kind == "local-path" and resolved.path == str(tiny_model) and resolved.alias is None
    assert resolved.architecture == "LlamaForCausalLM" and resolved.model_type == "llama"
    assert resolved.context_length == 128 and resolved.has_chat_template and resolved.has_generation_config
    assert resolved.weight_files == ["model.safetensors"] and resolved.weights_dtype == "float32"
    assert resolved.modalities == ["text"] and resolved.weights_format == "safetensors"
    assert (resolved.shape.layers, resolved.shape.kv_heads, resolved.shape.head_dim) == (2, 2, 16)
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert resolved.parameters == real and resolved.parameters_exact
    assert resolved.weight_bytes == (tiny_model / "model.safetensors").stat().st_size


def test_builtin_and_user_aliases(tiny_model):
    demo = resolve(RuntimeConfig(model="demo"))
    assert demo.alias == "demo" and demo.kind == "local-path" and demo.architecture == "LlamaForCausalLM"
    resolved = resolve(RuntimeConfig(model="mine", aliases={"mine": str(tiny_model)}))
    assert resolved.alias == "mine" and resolved.path == str(tiny_model)
    chained = resolve(RuntimeConfig(model="short", aliases={"short": "mine", "mine": str(tiny_model)}))
    assert chained.alias == "short" and chained.path == str(tiny_model)
    with pytest.raises(UserError, match="in a loop"):
        resolve(RuntimeConfig(model="a", aliases={"a": "b", "b": "a"}))


def test_a_name_under_models_dir(tiny_model, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "tiny-chat")
    shutil.copytree(tiny_model, models / "org" / "nested")
    resolved = resolve(RuntimeConfig(model="tiny-chat", models_dir=str(models)))
    assert resolved.kind == "models-dir" and resolved.path == str((models / "tiny-chat").resolve())
    # org/name under models_dir wins over a Hugging Face lookup of the same id
    assert resolve(RuntimeConfig(model="org/nested", models_dir=str(models))).kind == "models-dir"


def test_models_dir_is_taken_from_the_launch_folder(tiny_model, tmp_path, monkeypatch):
    shutil.copytree(tiny_model, tmp_path / "models" / "here")
    monkeypatch.chdir(tmp_path)
    assert resolve(RuntimeConfig(model="here")).kind == "models-dir"


@pytest.mark.parametrize("reference", ["./missing", "../missing/model", "/no/such/model", "~/no-such-model-here",
                                       "a/b/c", "models/", "C:\\models\\x"])
def test_a_path_like_reference_that_does_not_exist_says_path_not_found(reference, tmp_path):
    assert looks_like_path(reference)
    with pytest.raises(UserError) as raised:
        resolve(RuntimeConfig(model=reference, models_dir=str(tmp_path)))
    assert "path not found" in str(raised.value) and "repo" not in str(raised.value).lower()


def test_an_unknown_bare_name_lists_what_was_tried(tmp_path):
    with pytest.raises(UserError) as raised:
        resolve(RuntimeConfig(model="nosuchmodel", models_dir=str(tmp_path)))
    message = str(raised.value)
    assert "not an alias (demo)" in message and "runtime.models_dir" in message and "org/name" in message


def test_same_weights_same_digest_different_weights_different_digest(tiny_model, tmp_path):
    copy = Path(shutil.copytree(tiny_model, tmp_path / "copy"))
    other = build_tiny_model(tmp_path / "other", seed=1)
    digest = resolve(RuntimeConfig(model=str(tiny_model))).weights_digest
    assert digest.startswith("sha256:")
    assert resolve(RuntimeConfig(model=str(copy))).weights_digest == digest
    assert resolve(RuntimeConfig(model=str(other))).weights_digest != digest


def test_the_digest_is_cached_by_size_and_mtime(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    folder = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    first = resolve(RuntimeConfig(model=str(folder))).weights_digest
    cache = json.loads((tmp_path / "cache" / "file-digests.json").read_text())
    entry = cache[str((folder / "model.safetensors").resolve())]
    assert entry["sha256"] == file_sha256(folder / "model.safetensors")
    # a stale cache entry is trusted while size and mtime match: proof that the file was not reread
    entry["sha256"] = "0" * 64
    (tmp_path / "cache" / "file-digests.json").write_text(json.dumps(cache))
    assert resolve(RuntimeConfig(model=str(folder))).weights_digest != first
    os.utime(folder / "model.safetensors", ns=(1, 1))  # touched: hashed again
    assert resolve(RuntimeConfig(model=str(folder))).weights_digest == first


def test_a_sharded_model_counts_every_shard_named_in_its_index(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(tiny_model, tmp_path / "sharded"))
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / shard, metadata={"format": "pt"})
    (folder / "consolidated.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())  # ignored
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    resolved = resolve(RuntimeConfig(model=str(folder)))
    assert resolved.weight_files == sorted(shards)
    assert resolved.parameters == resolve(RuntimeConfig(model=str(tiny_model))).parameters
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match="missing from .* the download is incomplete"):
        resolve(RuntimeConfig(model=str(folder)))


def broken_folder(tiny_model: Path, tmp_path: Path, breakage: str) -> Path:
    folder = Path(shutil.copytree(tiny_model, tmp_path / "broken"))
    weights = folder / "model.safetensors"
    if breakage == "no config":
        (folder / "config.json").unlink()
    elif breakage == "adapter":
        (folder / "config.json").unlink()
        (folder / "adapter_config.json").write_text("{}")
    elif breakage == "no weights":
        weights.unlink()
    elif breakage == "pickle only":
        weights.rename(folder / "pytorch_model.bin")
    elif breakage == "remote code":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling.Model"}
        (folder / "config.json").write_text(json.dumps(config))
    elif breakage == "bad json":
        (folder / "config.json").write_text("{nope")
    elif breakage == "garbage weights":
        weights.write_bytes(b"\xff" * 16)
    elif breakage == "truncated weights":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif breakage == "empty weights":
        weights.write_bytes(b"")
    elif breakage == "header not json":
        weights.write_bytes(struct.pack("<Q", 4) + b"nope")
    elif breakage == "a file":
        return weights
    return folder


@pytest.mark.parametrize("breakage,expected", [
    ("no config", "has no config.json, so it is not a transformers model folder"),
    ("adapter", "holds an adapter (adapter_config.json), not a model"),
    ("no weights", "no weight files"),
    ("pickle only", "only pickle weights in"),
    ("remote code", "set runtime.trust_remote_code=true"),
    ("bad json", "config.json:1: not valid JSON"),
    ("garbage weights", "is not a readable safetensors file"),
    ("truncated weights", "truncated: the header describes"),
    ("empty weights", "is not a readable safetensors file (only 0 bytes)"),
    ("header not json", "header is not JSON"),
    ("a file", "is a file; give the model's folder"),
])
def test_resolve_refuses_broken_folders(tiny_model, tmp_path, breakage, expected):
    folder = broken_folder(tiny_model, tmp_path, breakage)
    with pytest.raises(UserError) as raised:
        resolve(RuntimeConfig(model=str(folder)))
    assert expected in str(raised.value) and f"runtime.model='{folder}'" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_pickle_weights_and_remote_code_pass_only_when_allowed(tiny_model, tmp_path):
    folder = broken_folder(tiny_model, tmp_path, "pickle only")
    resolved = resolve(RuntimeConfig(model=str(folder), allow_pickle=True))
    assert resolved.weights_format == "pickle" and not resolved.parameters_exact and resolved.parameters > 0
    remote = broken_folder(tiny_model, tmp_path / "r", "remote code")
    with pytest.raises(UserError, match=r"names modeling.Model for AutoModelForCausalLM, but .*modeling.py is missing"):
        resolve(RuntimeConfig(model=str(remote), trust_remote_code=True))  # trusted, but the code is not there
    (remote / "modeling.py").write_text("")
    assert resolve(RuntimeConfig(model=str(remote), trust_remote_code=True)).architecture == "LlamaForCausalLM"


def test_a_multimodal_config_declares_its_modalities(tiny_model, tmp_path):
    folder = Path(shutil.copytree(tiny_model, tmp_path / "vlm"))
    config = json.loads((folder / "config.json").read_text())
    text_config = {k: config.pop(k) for k in ("num_hidden_layers", "num_key_value_heads", "head_dim")
                   if k in config}
    config.update(vision_config={"hidden_size": 8}, text_config=text_config)
    (folder / "config.json").write_text(json.dumps(config))
    resolved = resolve(RuntimeConfig(model=str(folder)))
    assert resolved.modalities == ["text", "image"] and resolved.shape.layers == 2
