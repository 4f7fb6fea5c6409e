"""A content digest of a model's weights, cheap to recompute: same digest, same weights.

The digest is a sha256 over the sorted `name:sha256-of-file` lines of the weight files, so a model
in the Hugging Face cache and the same files copied into a local folder get the same digest.
Files in the Hugging Face cache are stored under their own sha256 (the blob name), which is used
as is; other files are hashed once and the result is kept in a small cache keyed by the file's
real path, size and modification time, so a multi-GB model is read in full only the first time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from pipeline.core.hub_cache import blob_sha256
from pipeline.core.files import cache_dir, write_json

CACHE_FILE = "file-digests.json"
# Small files of a model folder that shape the prompt or the decoding (the weights have their own digest).
MODEL_FILE_SUFFIXES = (".json", ".jinja", ".model", ".txt")


def weights_digest(files: list[Path] | tuple[Path, ...]) -> str:
    cache_path = cache_dir() / CACHE_FILE
    cache = _read_cache(cache_path)
    changed = False
    lines = []
    for path in sorted(files, key=lambda p: p.name):
        file_digest = blob_sha256(path)
        if file_digest is None:
            real = path.resolve()
            stat = real.stat()
            key = str(real)
            entry = cache.get(key)
            if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
                file_digest = entry["sha256"]
            else:
                file_digest = file_sha256(real)
                cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_digest}
                changed = True
        lines.append(f"{path.name}:{file_digest}\n")
    if changed:
        try:
            write_json(cache_path, cache)
        except OSError:
            pass  # a read-only home only costs hashing again next time
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def model_files_digest(folder: Path) -> str:
    """sha256 over the `name:sha256` lines of the model folder's tokenizer, template and config files."""
    lines = [f"{p.name}:{file_sha256(p)}\n" for p in sorted(folder.iterdir(), key=lambda p: p.name)
             if p.suffix in MODEL_FILE_SUFFIXES and p.is_file()]
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        data: Optional[dict] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
