"""Lay out a Hugging Face cache on disk exactly as huggingface_hub does, for tests (no network)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin"))


def etag(name: str, data: bytes) -> str:
    """What the Hub gives as a file's etag: sha256 for LFS files, the git blob id otherwise."""
    return hashlib.sha256(data).hexdigest() if is_lfs(name) else git_blob_id(data)


def add_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], refs: tuple[str, ...] = (),
                 kind: str = "models", link: bool = True) -> Path:
    """A snapshot laid out as huggingface_hub lays it out: blobs/<etag>, snapshots/<commit>/<file> -> blob."""
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if link:
            blob = repo / "blobs" / etag(name, data)
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            target.symlink_to(os.path.relpath(blob, target.parent))
        else:
            target.write_bytes(data)
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot
