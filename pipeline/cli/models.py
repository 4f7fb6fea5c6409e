"""`python -m pipeline.models`: list the models this machine has, as a table or as JSON.

Lists the built-in models first (the aliases that name a model shipped in the package: demo,
tool-demo, thinking-demo, vision-demo), then looks in `--models-dir` (default `models/`, as
`runtime.models_dir`; one level of org/name nesting is followed) and in the local Hugging Face
cache (HF_HUB_CACHE / HF_HOME), reads each
folder the way the resolve stage does, and prints what it found: the reference to pass as
`runtime.model`, architecture, parameters, size, dtype, context, chat template, generation config.
A folder that resolve would refuse (no tokenizer, no model_type, ...) is listed as unusable, with
the reason. A `--models-dir` that does not exist is a mistake (exit 2); the default `models/` may
be absent. Nothing is downloaded or loaded.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from pipeline.core.digest import weights_digest
from pipeline.core.hub_cache import cached_models
from pipeline.core.console import gib
from pipeline.core.model_files import read_model_folder
from pipeline.core.config import ASSETS_DIR, CONF_DIR
from pipeline.core.errors import EXIT_USAGE, UserError

BUILT_IN = "built-in"


@dataclass
class ModelEntry:
    reference: str  # what to pass as runtime.model
    kind: str  # built-in (shipped in the package), models-dir or hf-cache
    path: str
    revision: Optional[str] = None
    architecture: Optional[str] = None
    model_type: Optional[str] = None
    parameters: Optional[int] = None
    weight_bytes: Optional[int] = None
    weights_dtype: Optional[str] = None
    context_length: Optional[int] = None
    has_chat_template: Optional[bool] = None
    has_generation_config: Optional[bool] = None
    modalities: Optional[list[str]] = None
    weights_digest: Optional[str] = None
    problem: Optional[str] = None  # why resolve would refuse this folder


def find_models(models_dir: Path, with_digest: bool = False) -> list[ModelEntry]:
    entries = [_describe(name, BUILT_IN, folder, None, with_digest) for name, folder in built_in_models()]
    entries += [_describe(name, "models-dir", folder, None, with_digest) for name, folder in _local_folders(models_dir)]
    for repo in cached_models():
        revision = repo.refs[0] if repo.refs else repo.commit
        reference = repo.repo_id if "main" in repo.refs else f"{repo.repo_id}@{revision}"
        entries.append(_describe(reference, "hf-cache", repo.folder, revision, with_digest))
    return entries


def built_in_models() -> list[tuple[str, Path]]:
    """The aliases of conf/config.yaml that name a model shipped in the package (`${asset:...}`), with its folder."""
    import yaml

    aliases = (yaml.safe_load((CONF_DIR / "config.yaml").read_text()).get("runtime") or {}).get("aliases") or {}
    shipped = ((name, re.fullmatch(r"\$\{asset:(.+)\}", str(target).strip())) for name, target in aliases.items())
    return [(name, ASSETS_DIR / match.group(1)) for name, match in shipped if match]


def _local_folders(models_dir: Path) -> list[tuple[str, Path]]:
    if not models_dir.is_dir():
        return []
    found = []
    for child in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        nested = sorted(p for p in child.iterdir() if p.is_dir() and (p / "config.json").is_file())
        if not (child / "config.json").is_file() and nested:
            found.extend((f"{child.name}/{p.name}", p) for p in nested)
        else:
            found.append((child.name, child))
    return found


def _describe(reference: str, kind: str, folder: Path, revision: Optional[str], with_digest: bool) -> ModelEntry:
    entry = ModelEntry(reference=reference, kind=kind, path=str(folder), revision=revision)
    try:
        facts = read_model_folder(folder, reference)
    except UserError as error:
        entry.problem = str(error).removeprefix(f"{reference}: ")
        return entry
    entry.architecture, entry.model_type = facts.architecture, facts.model_type
    entry.parameters, entry.weight_bytes, entry.weights_dtype = facts.parameters, facts.weight_bytes, facts.weights_dtype
    entry.context_length, entry.modalities = facts.context_length, list(facts.modalities)
    entry.has_chat_template, entry.has_generation_config = facts.has_chat_template, facts.has_generation_config
    if with_digest:
        entry.weights_digest = weights_digest(facts.weight_files)
    return entry


def table(entries: list[ModelEntry]) -> str:
    if not entries:
        return "no models found"
    header = ["model", "kind", "architecture", "params", "size", "dtype", "context", "chat", "gen cfg"]
    rows = []
    for e in entries:
        if e.problem:
            rows.append([e.reference, e.kind, f"unusable: {e.problem}"])
            continue
        rows.append([e.reference, e.kind, e.architecture or "", _count(e.parameters), gib(e.weight_bytes),
                     e.weights_dtype or "", str(e.context_length or "?"), _yes(e.has_chat_template),
                     _yes(e.has_generation_config)] + ([e.weights_digest[:19]] if e.weights_digest else []))
    if any(e.weights_digest for e in entries):
        header.append("digest")
    full_rows = [row for row in rows if len(row) > 3] + [header]
    widths = [max(len(row[i]) for row in full_rows if i < len(row)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip()]
    for row in rows:
        if len(row) == 3:  # an unusable folder: its reason runs on
            lines.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2]]))
        else:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _count(parameters: Optional[int]) -> str:
    if parameters is None:
        return ""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if parameters >= scale:
            return f"{parameters / scale:.1f}{suffix}"
    return str(parameters)


def _yes(value: Optional[bool]) -> str:
    return "yes" if value else "no"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.models", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", help="folder of local models (default: models)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--digest", action="store_true",
                        help="also compute each model's weights digest (reads local weights once, then cached)")
    args = parser.parse_args(argv)
    models_dir = Path(args.models_dir or "models").expanduser()
    if models_dir.is_file():
        print(f"error: --models-dir {models_dir}: {models_dir.absolute()} is a file, expected a folder of models",
              file=sys.stderr)
        return EXIT_USAGE
    if args.models_dir is not None and not models_dir.is_dir():  # the default may be absent: then only the cache
        print(f"error: --models-dir {args.models_dir}: no such folder ({models_dir.absolute()})", file=sys.stderr)
        return EXIT_USAGE
    entries = find_models(models_dir, args.digest)
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
    else:
        print(table(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
