"""Fingerprints of the input files that decide what the model writes, so a resume can tell they changed.

A run's settings are compared on resume (pipeline.run.resume.config_difference), but the settings
only name files: the same `dataset.path` can hold other prompts by then, the same model folder
other weights. When a run starts, `fingerprint` records each such file's content digest, with
its path as typed and as found, in `inputs.json` in the run folder: the dataset file, the
`session.history` file, the model's weights digest (pipeline.core.digest) and a digest of the
model's small files that shape prompts and decoding (tokenizer, chat template, config,
generation config), and, when the samples have image or audio parts, each part's sha256 by its
source (`dataset.media`: a local file, or an http(s) URL as the backend fetched it). A resume
computes the same and `differences` names what changed; the resume is then refused, since the
kept records would not match the ones generated now.

This module reads files and hashes them; it does not decide when to refuse (pipeline.run.resume and
the runner do).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.core.digest import file_sha256, model_files_digest
from pipeline.core.config import Config
from pipeline.core.files import read_json
from pipeline.core.folder_names import INPUTS_FILE
from pipeline.core.records import ResolvedModel, Sample
from pipeline.core.redact import hide_credentials

MISSING = "missing"
MEDIA = "dataset.media"  # the samples' image and audio parts: known once the plan has read (and fetched) them


def fingerprint(config: Config, model: ResolvedModel,
                samples: Optional[Sequence[Sample]] = None) -> dict[str, dict[str, Any]]:
    """What this run reads, by the setting that names it: {"as typed", "path", "sha256"} (or the model's
    digests); with `samples`, their image and audio parts too."""
    inputs = {"dataset.path": _dataset(config.dataset.path)}
    media = media_fingerprint(samples or ())
    if media:
        inputs[MEDIA] = media
    if config.dataset.fewshot.path:
        inputs["dataset.fewshot.path"] = _dataset(config.dataset.fewshot.path)
    if config.session.history:
        inputs["session.history"] = _file(config.session.history)
    if not model.path:  # no files of ours (a served model): it is named by its id and where it is served
        inputs["runtime.model"] = {"as typed": config.runtime.model, "path": "", "endpoint": model.endpoint}
        return inputs
    inputs["runtime.model"] = {"as typed": config.runtime.model, "path": model.path,
                               "weights_digest": model.weights_digest,
                               "files_digest": model_files_digest(Path(model.path))}
    return inputs


def media_fingerprint(samples: Sequence[Sample]) -> Optional[dict[str, Any]]:
    """The sha256 of each image and audio part by its source (path or URL; a data URL is part of the
    dataset file, fingerprinted with it); None when there are none."""
    parts = {hide_credentials(part.source): part.sha256 for sample in samples for message in sample.messages for part in message.media
             if not part.source.startswith("data:")}
    if not parts:
        return None
    lines = "".join(f"{source}:{sha}\n" for source, sha in sorted(parts.items()))
    return {"as typed": f"{len(parts)} image or audio file(s) or URL(s)", "path": "",
            "sha256": "sha256:" + hashlib.sha256(lines.encode()).hexdigest(), "parts": parts}


def _dataset(typed: str) -> dict[str, Any]:
    """A dataset file's fingerprint, or a Hub dataset's: its cached snapshot, named by commit."""
    from pipeline.data.sources import source_kind

    if source_kind(typed) != "hub":
        return _file(typed)
    from pipeline.core.hub_cache import parse_repo_reference
    from pipeline.data.hub import find_dataset

    repo_id, revision = parse_repo_reference(typed.strip()) or (typed, None)
    folder = find_dataset(repo_id, revision)
    return {"as typed": typed, "path": str(folder or ""), "sha256": f"commit:{folder.name}" if folder else MISSING}


def _file(typed: str) -> dict[str, Any]:
    path = Path(typed).expanduser().absolute()  # relative to the launch folder, where a resume runs too
    return {"as typed": typed, "path": str(path), "sha256": file_sha256(path) if path.is_file() else MISSING}


def read_inputs(run_dir: Path) -> Optional[dict[str, dict[str, Any]]]:
    """The fingerprints a run recorded; None for a run that stopped before recording them."""
    path = run_dir / INPUTS_FILE
    return read_json(path) if path.is_file() else None


def differences(recorded: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> list[str]:
    """Each input whose content is not what the run read, in words (empty: nothing changed)."""
    found = []
    for key, old in recorded.items():
        new = now.get(key)
        if new is None:
            found.append(f"{key}: {old.get('as typed')!r} was read by the run, none is set now")
            continue
        where = new.get("path")
        if "parts" in old and old.get("sha256") != new.get("sha256"):
            found.extend(_media_changes(old["parts"], new.get("parts") or {}))
            continue
        for field in ("sha256", "weights_digest", "files_digest"):
            if field not in old or old[field] == new.get(field):
                continue
            if new.get(field) == MISSING:
                found.append(f"{key}={new['as typed']!r}: file not found ({where}); the run read {old['path']}")
            else:
                what = {"sha256": "the file's content", "weights_digest": "the model's weights",
                        "files_digest": "the model's tokenizer, chat template or config files"}[field]
                found.append(f"{key}={new['as typed']!r}: {what} changed since the run started ({where}: "
                             f"{_short(old[field])} then, {_short(new.get(field))} now)")
    return found


def _media_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The parts whose content is not what the run read (at most three named, then a count)."""
    changed = [f"{source!r}: its content changed since the run started ({_short(sha)} then, "
               f"{_short(new[source])} now)" if source in new else f"{source!r} is no longer in the dataset"
               for source, sha in old.items() if new.get(source) != sha]
    changed += [f"{source!r} is new in the dataset" for source in new if source not in old]
    named = changed[:3] + ([f"and {len(changed) - 3} more"] if len(changed) > 3 else [])
    return [f"{MEDIA}: " + ", ".join(named)]


def _short(digest: Any) -> str:
    text = str(digest)
    return text[: len("sha256:") + 12] if text.startswith("sha256:") else text[:12]
