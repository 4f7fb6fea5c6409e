"""Resolve stage: a model reference -> a ResolvedModel, by reading files only.

A reference is an alias (built in, or added under `runtime.aliases`) or a local folder. The
folder's `config.json`, tokenizer files and weight files are inspected; no tensor is loaded.
Pickle weights and remote code are refused here, before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

from pipeline.config import ASSETS_DIR, RuntimeConfig
from pipeline.errors import UserError
from pipeline.records import ResolvedModel

BUILTIN_ALIASES = {"demo": str(ASSETS_DIR / "demo_model")}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def resolve(runtime: RuntimeConfig) -> ResolvedModel:
    aliases = {**BUILTIN_ALIASES, **runtime.aliases}
    reference = runtime.model
    kind = "alias" if reference in aliases else "path"
    folder = Path(aliases.get(reference, reference)).expanduser()
    where = f"runtime.model={reference!r}"
    if not folder.exists():
        raise UserError(f"{where}: path not found: {folder} (use a local model folder or an alias: "
                        f"{', '.join(sorted(aliases))})")
    if not folder.is_dir():
        raise UserError(f"{where}: {folder} is a file; give the model's folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{where}: {folder} has no config.json, so it is not a transformers model folder")
    try:
        model_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{where}: {config_file} is not valid JSON: {error}") from None
    if model_config.get("auto_map") and not runtime.trust_remote_code:
        raise UserError(f"{where}: the model needs its own code (auto_map in config.json); "
                        "set runtime.trust_remote_code=true only if you trust it")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise UserError(f"{where}: only pickle weights ({', '.join(pickles)}); they can run code when "
                            "loaded, so only safetensors are accepted")
        raise UserError(f"{where}: no weight files (*.safetensors) in {folder}")
    architectures = model_config.get("architectures") or ["unknown"]
    return ResolvedModel(
        reference=reference,
        kind=kind,
        path=str(folder.resolve()),
        architecture=architectures[0],
        model_type=model_config.get("model_type", "unknown"),
        context_length=_context_length(model_config),
        has_chat_template=_has_chat_template(folder),
        has_generation_config=(folder / "generation_config.json").is_file(),
        weight_files=[p.name for p in weights],
        weight_bytes=sum(p.stat().st_size for p in weights),
        **_count_parameters(weights, where),
        weights_digest=_digest(weights),
    )


def _context_length(model_config: dict) -> int:
    for key in CONTEXT_KEYS:
        value = model_config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0  # unknown: the plan says so instead of checking


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        try:
            return bool(json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template"))
        except json.JSONDecodeError:
            return False
    return False


def _count_parameters(files: list[Path], where: str) -> dict:
    """Parameters and dominant dtype from the safetensors headers, without reading any tensor."""
    parameters, by_dtype = 0, {}
    for path in files:
        try:
            with path.open("rb") as handle:
                header_size = struct.unpack("<Q", handle.read(8))[0]
                if header_size > path.stat().st_size:
                    raise ValueError("header larger than the file")
                header = json.loads(handle.read(header_size))
        except (struct.error, ValueError, UnicodeDecodeError) as error:
            raise UserError(f"{where}: {path.name} is not a readable safetensors file ({error})") from None
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(tensor["shape"])
            parameters += count
            by_dtype[tensor["dtype"]] = by_dtype.get(tensor["dtype"], 0) + count
    dtype = max(by_dtype, key=by_dtype.get) if by_dtype else "unknown"
    return {"parameters": parameters, "weights_dtype": SAFETENSORS_DTYPES.get(dtype, dtype)}


def _digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
