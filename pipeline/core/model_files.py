"""Read what a model folder holds without loading a tensor: config.json, weight headers, templates.

`read_model_folder` checks a folder the way the loader would need it (a config.json with a
model_type the installed transformers knows, a tokenizer it can read, weight files it is allowed
to open, no code to run unless trusted, and then every code file auto_map names), so that a
folder resolve accepts does not fail only once the run has started, and returns `ModelFacts`:
architecture, shape (layers, heads: what the KV cache needs), context length, parameter count and
dtype from the safetensors headers, and which tokenizer, chat template and generation files exist. Every problem
is a UserError naming the folder or file and the fix. This module does not locate models (see
stages/resolve.py) and does not hash weights (see digest.py).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.records import ModelShape
from pipeline.core.text_files import read_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
                      "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
                      "U8": ("uint8", 1), "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1),
                      "F8_E5M2": ("float8_e5m2", 1), "U16": ("uint16", 2), "U32": ("uint32", 4),
                      "U64": ("uint64", 8), "F8_E8M0": ("float8_e8m0fnu", 1), "F4": ("float4_e2m1fn_x2", 1)}
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit
# tokenizer files transformers reads only through another package (without a tokenizer.json beside them)
TOKENIZER_FILES_NEEDING = (("tokenizer.model", "sentencepiece"), ("spiece.model", "sentencepiece"),
                           ("sentencepiece.bpe.model", "sentencepiece"), ("*.tiktoken", "tiktoken"),
                           ("tekken.json", "mistral_common"))


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    model_type: str
    context_length: int  # 0 when config.json states none
    modalities: tuple[str, ...]  # text, plus image/audio when the model takes them
    shape: ModelShape
    has_tokenizer_json: bool
    has_chat_template: bool
    has_generation_config: bool
    weights_format: str  # safetensors or pickle
    weight_files: tuple[Path, ...]
    weight_bytes: int  # on disk
    parameters: int  # exact from safetensors headers; estimated from file sizes for pickle weights
    parameters_exact: bool
    weights_dtype: str  # the dtype most weights are stored in


def read_model_folder(folder: Path, where: str, allow_pickle: bool = False,
                      trust_remote_code: bool = False) -> ModelFacts:
    """The facts of a model folder, or a UserError (prefixed with `where`) saying what is wrong."""
    config = read_config_json(folder, where)
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(f"{where}: the model needs its own Python code (auto_map in {folder / 'config.json'}); "
                        "set runtime.trust_remote_code=true only if you trust its authors")
    # what loading would otherwise find out only after the run started (a failed run, a library's words)
    _check_model_type(config, folder, where)
    _check_remote_code_files(config, folder, where)
    _check_tokenizer(config, folder, where)
    weights_format, files = _weight_files(folder, where, allow_pickle)
    if weights_format == "safetensors":
        parameters, dtype = _count_parameters(files, where)
        exact = True
    else:
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
        parameters = sum(p.stat().st_size for p in files) // _bytes_per(dtype)
        exact = False
    architectures = config.get("architectures") or ["unknown"]
    return ModelFacts(
        architecture=str(architectures[0]),
        model_type=str(config.get("model_type", "unknown")),
        context_length=context_length(config),
        modalities=modalities(config),
        shape=model_shape(config),
        has_tokenizer_json=(folder / "tokenizer.json").is_file(),
        has_chat_template=has_chat_template(folder),
        has_generation_config=(folder / "generation_config.json").is_file(),
        weights_format=weights_format,
        weight_files=tuple(files),
        weight_bytes=sum(p.stat().st_size for p in files),
        parameters=parameters,
        parameters_exact=exact,
        weights_dtype=dtype,
    )


def read_config_json(folder: Path, where: str) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "adapter_config.json").is_file():
            raise UserError(f"{where}: {folder} holds an adapter (adapter_config.json), not a model; "
                            "point runtime.model at its base model")
        raise UserError(f"{where}: {folder} has no config.json, so it is not a transformers model folder")
    config = read_json(config_file, where)  # not UTF-8, not JSON: one line naming the file and line
    if not isinstance(config, dict):
        raise UserError(f"{where}: {config_file} must hold a JSON object")
    return config


def read_generation_config(folder: Path) -> dict[str, Any]:
    """The model's generation_config.json as a dict ({} when absent); a broken file is a UserError."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except UserError as error:
        raise UserError(f"{error}; fix or delete it") from None
    return data if isinstance(data, dict) else {}


def _check_model_type(config: dict[str, Any], folder: Path, where: str) -> None:
    """transformers builds a model from config.json's model_type, unless the model ships its own config class."""
    if _auto_map(config).get("AutoConfig"):
        return  # the model's own code defines its config (trust_remote_code was checked above)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise UserError(f"{where}: {folder / 'config.json'} has no model_type, so transformers cannot tell which "
                        "architecture to build; add it as the model's source has it (e.g. \"model_type\": \"llama\")")
    if not is_known_model_type(model_type):
        raise UserError(f"{where}: model_type {model_type!r} in {folder / 'config.json'} is not one the installed "
                        f"transformers ({_transformers_version()}) knows; a newer transformers may "
                        "(pip install -U transformers), or check the spelling")


def _check_remote_code_files(config: dict[str, Any], folder: Path, where: str) -> None:
    """Every Python file auto_map names must be in the folder (files in another repo, `repo--module.Class`,
    are left to transformers)."""
    for auto_class, references in _auto_map(config).items():
        for reference in references if isinstance(references, list) else [references]:
            if not isinstance(reference, str) or "--" in reference:
                continue
            module = reference.rsplit(".", 1)[0]
            if not (folder / f"{module}.py").is_file():
                raise UserError(f"{where}: auto_map in {folder / 'config.json'} names {reference} for {auto_class}, "
                                f"but {folder / (module + '.py')} is missing; copy the model's .py files "
                                "into the folder")


def _check_tokenizer(config: dict[str, Any], folder: Path, where: str) -> None:
    """The folder must hold a tokenizer the installed packages can read: tokenizer.json, a vocabulary
    transformers builds one from, or a file another package reads (sentencepiece, tiktoken, ...)."""
    if _auto_map(config).get("AutoTokenizer") or (folder / "tokenizer.json").is_file():
        return
    if ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (folder / "vocab.txt").is_file():
        return  # a BPE or WordPiece vocabulary: transformers builds the tokenizer from it
    needing = [(path.name, package) for pattern, package in TOKENIZER_FILES_NEEDING
               for path in sorted(folder.glob(pattern))]
    if any(importlib.util.find_spec(package) is not None for _, package in needing):
        return
    if needing:
        name, package = needing[0]
        raise UserError(f"{where}: the tokenizer in {folder} is {name}, which needs the {package} package: "
                        f"pip install {package} (or add the model's tokenizer.json)")
    raise UserError(f"{where}: {folder} has no tokenizer (no tokenizer.json, tokenizer.model, or vocab.json "
                    "with merges.txt); copy the tokenizer files from the model's source into the folder")


def _auto_map(config: dict[str, Any]) -> dict[str, Any]:
    auto_map = config.get("auto_map")
    return auto_map if isinstance(auto_map, dict) else {}


def is_known_model_type(model_type: str) -> bool:
    """Whether the installed transformers has a config class for `model_type`.

    Looked up in transformers' generated table of model types, read from its file without importing
    transformers (its auto classes import torch: seconds, where resolve takes milliseconds, and this
    layer imports no model library). True when the table cannot be read (transformers not installed,
    or another layout): then nothing here can tell, and loading the model will."""
    table = _model_type_table()
    return not table or model_type in table


@functools.lru_cache(maxsize=1)
def _model_type_table() -> frozenset[str]:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    table = Path(next(iter(spec.submodule_search_locations))) / "models" / "auto" / "auto_mappings.py"
    try:
        module_spec = importlib.util.spec_from_file_location("pipeline_transformers_auto_mappings", table)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]  # plain data: it imports only collections
        return frozenset(module.CONFIG_MAPPING_NAMES)
    except Exception:  # another transformers layout: nothing to look up
        return frozenset()


def _transformers_version() -> str:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def context_length(config: dict[str, Any]) -> int:
    for source in (config, config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return 0


def modalities(config: dict[str, Any]) -> tuple[str, ...]:
    """What a model takes as input, from the sub-configs multimodal models declare."""
    kinds = ["text"]
    if config.get("vision_config") or "image_token_id" in config or "image_token_index" in config:
        kinds.append("image")
    if config.get("audio_config") or "audio_token_id" in config or "audio_token_index" in config:
        kinds.append("audio")
    return tuple(kinds)


def model_shape(config: dict[str, Any]) -> ModelShape:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config

    def first(*keys: str, default: int = 0) -> int:
        for key in keys:
            value = text.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return default

    hidden = first("hidden_size", "n_embd", "d_model")
    heads = first("num_attention_heads", "n_head", "num_heads")
    kv_heads = 1 if text.get("multi_query") else first("num_key_value_heads", "num_kv_heads", default=heads)
    head_dim = first("head_dim", default=hidden // heads if heads else 0)
    return ModelShape(
        layers=first("num_hidden_layers", "n_layer", "num_layers"),
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        intermediate_size=first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        vocab_size=first("vocab_size"),
    )


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            return bool(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template"))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return False
    return False


def _weight_files(folder: Path, where: str, allow_pickle: bool) -> tuple[str, list[Path]]:
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        try:
            shards = sorted(set(read_json(index, where)["weight_map"].values()))
        except (KeyError, TypeError, AttributeError) as error:
            raise UserError(f"{where}: {index} is not a valid safetensors index (no weight_map: {error})") from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise UserError(f"{where}: {index.name} lists {len(missing)} shard(s) missing from {folder}, "
                            f"first {missing[0]}; the download is incomplete")
        return "safetensors", [folder / name for name in shards]
    if (folder / "model.safetensors").is_file():
        return "safetensors", [folder / "model.safetensors"]
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return "safetensors", safetensors
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        if not allow_pickle:
            raise UserError(f"{where}: only pickle weights in {folder} ({', '.join(p.name for p in pickles)}); "
                            "they can run code when loaded: convert them to safetensors, or set "
                            "runtime.allow_pickle=true if you trust their source")
        return "pickle", pickles
    raise UserError(f"{where}: no weight files in {folder} (expected *.safetensors)")


def safetensors_header(path: Path, where: str) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size (catches truncation)."""
    size = path.stat().st_size
    problem = f"{where}: {path.name} in {path.parent} is not a readable safetensors file"
    hint = "; it may be corrupt or partly downloaded: download it again"
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise UserError(f"{problem} (only {size} bytes){hint}")
            header_size = struct.unpack("<Q", raw)[0]
            if header_size > min(size - 8, MAX_HEADER_BYTES):
                raise UserError(f"{problem} (header of {header_size} bytes in a file of {size}){hint}")
            header = json.loads(handle.read(header_size))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{problem} (header is not JSON: {error}){hint}") from None
    if not isinstance(header, dict):
        raise UserError(f"{problem} (header is not a JSON object){hint}")
    data_end = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = tensor["data_offsets"]
            dtype, shape = tensor["dtype"], tensor["shape"]
            expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{problem} (tensor {name!r} has a malformed entry){hint}") from None
        if end - begin != expected and dtype != "F4":
            raise UserError(f"{problem} (tensor {name!r}: {end - begin} bytes for shape {shape} {dtype}){hint}")
        data_end = max(data_end, end)
    if 8 + header_size + data_end > size:
        raise UserError(f"{problem} (truncated: the header describes {8 + header_size + data_end} bytes, "
                        f"the file has {size}){hint}")
    return header


def _count_parameters(files: list[Path], where: str) -> tuple[int, str]:
    """Parameters and dominant dtype from the safetensors headers, without reading any tensor."""
    parameters, by_dtype = 0, {}
    for path in files:
        for name, tensor in safetensors_header(path, where).items():
            if name == "__metadata__":
                continue
            count = math.prod(tensor["shape"])
            parameters += count
            by_dtype[tensor["dtype"]] = by_dtype.get(tensor["dtype"], 0) + count
    dtype = max(by_dtype, key=by_dtype.get) if by_dtype else "unknown"
    return parameters, SAFETENSORS_DTYPES.get(dtype, (dtype, 0))[0]


def _bytes_per(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}.get(dtype, 4)

