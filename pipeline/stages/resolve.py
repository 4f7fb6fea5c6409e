"""Resolve stage: a model reference -> a ResolvedModel, by reading files only.

A reference is, in this order: an alias (conf/config.yaml's table plus the user's own), an
existing folder, a name under `runtime.models_dir`, or a Hugging Face repo id with an optional
`@revision`, found in the local Hugging Face cache (downloaded only when
`runtime.allow_download=true`). A reference shaped like a path that does not exist is "path not
found", never a repo lookup. The folder found is then read by `model_files` (config.json,
safetensors headers; no tensor is loaded) and its weights digested. Loading is not done here.

A backend kind that finds its models another way says so in the registry (BackendKind.resolve):
a served model's `runtime.model` is the id its server serves, looked up nowhere here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.backends import registry
from pipeline.core.digest import weights_digest
from pipeline.core.hub_cache import download, find_cached, not_cached_message, parse_repo_reference
from pipeline.core.model_files import read_model_folder
from pipeline.core.config import ASSETS_DIR, BackendConfig, RuntimeConfig
from pipeline.core.errors import UserError
from pipeline.core.records import ResolvedModel

BUILTIN_ALIASES = {"demo": str(ASSETS_DIR / "demo_model")}  # works even without conf/ (the Python API)
MAX_ALIAS_DEPTH = 8


@dataclass(frozen=True)
class Location:
    """Where a reference points, before the folder is read."""

    kind: str  # local-path, models-dir, hf-cache or hf-download
    folder: Path
    alias: Optional[str] = None
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    commit: Optional[str] = None


def resolve(runtime: RuntimeConfig, backend: Optional[BackendConfig] = None) -> ResolvedModel:
    """What `runtime.model` is, for the backend kind chosen (the default kind when `backend` is None)."""
    own = registry.kind(backend.name).resolve if backend is not None else None
    if own is not None:
        return own(runtime, backend)
    where = f"runtime.model={runtime.model!r}"
    location = locate(runtime)
    facts = read_model_folder(location.folder, where, runtime.allow_pickle, runtime.trust_remote_code)
    return ResolvedModel(
        reference=runtime.model,
        kind=location.kind,
        alias=location.alias,
        path=str(location.folder.resolve()),
        repo_id=location.repo_id,
        revision=location.revision,
        commit=location.commit,
        architecture=facts.architecture,
        model_type=facts.model_type,
        modalities=list(facts.modalities),
        context_length=facts.context_length,
        shape=facts.shape,
        has_tokenizer_json=facts.has_tokenizer_json,
        has_chat_template=facts.has_chat_template,
        has_generation_config=facts.has_generation_config,
        weights_format=facts.weights_format,
        weight_files=[p.name for p in facts.weight_files],
        weight_bytes=facts.weight_bytes,
        parameters=facts.parameters,
        parameters_exact=facts.parameters_exact,
        weights_dtype=facts.weights_dtype,
        weights_digest=weights_digest(facts.weight_files),
    )


def locate(runtime: RuntimeConfig) -> Location:
    """Find the folder a reference points at, or raise a UserError saying where it looked."""
    where = f"runtime.model={runtime.model!r}"
    aliases = {**BUILTIN_ALIASES, **runtime.aliases}
    reference, alias = runtime.model.strip(), None
    for _ in range(MAX_ALIAS_DEPTH):
        if reference not in aliases:
            break
        alias = alias or reference
        reference = str(aliases[reference]).strip()
    else:
        raise UserError(f"{where}: the aliases refer to each other in a loop ({alias!r} ...); fix runtime.aliases")

    path = Path(reference).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{where}: {path} is a file; give the model's folder")
        return Location("local-path", path, alias)
    models_dir = Path(runtime.models_dir).expanduser()
    under_models_dir = models_dir / reference
    if under_models_dir.is_dir():
        return Location("models-dir", under_models_dir, alias)
    if looks_like_path(reference):
        raise UserError(f"{where}: path not found: {path.absolute()}")

    repo = parse_repo_reference(reference)
    if repo is not None:
        repo_id, revision = repo
        cached = find_cached(repo_id, revision)
        if cached is not None:
            return Location("hf-cache", cached.folder, alias, repo_id, revision, cached.commit)
        if not runtime.allow_download:
            raise UserError(f"{where}: {not_cached_message(repo_id, revision, None)}")
        try:
            fetched = download(repo_id, revision, pickle_weights=runtime.allow_pickle,
                               remote_code=runtime.trust_remote_code)
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
        return Location("hf-download", fetched.folder, alias, repo_id, revision, fetched.commit)

    known = ", ".join(sorted(aliases))
    raise UserError(f"{where}: not an alias ({known}), not a folder, not a model in "
                    f"runtime.models_dir={str(models_dir)!r}, and not a Hugging Face repo id (org/name[@revision])")


def looks_like_path(reference: str) -> bool:
    """A reference the user meant as a file system path (so a repo lookup would only confuse)."""
    return (reference.startswith(("/", "./", "../", "~", "\\")) or reference in (".", "..")
            or "\\" in reference or reference.endswith("/") or reference.count("/") >= 2
            or (len(reference) > 1 and reference[1] == ":"))  # a Windows drive letter
