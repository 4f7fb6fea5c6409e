"""Hugging Face Hub datasets, read from the local cache with the `datasets` library.

`org/name[@revision]` is looked up in the Hub cache (the one huggingface_hub uses, as
pipeline.core.hub_cache computes it) as `datasets--org--name/snapshots/<commit>`; the
snapshot folder is then read by `datasets.load_dataset` as a local folder (its README's configs are
the subsets, its files' names the splits), streamed, so nothing is converted or written to the
datasets cache. Only `runtime.allow_download=true` fetches a missing dataset (huggingface_hub's
snapshot_download); otherwise everything here is offline.

A missing subset or split, or one that needs choosing, is a one-line UserError listing what exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

from pipeline.core.errors import UserError, first_line
from pipeline.data.sources import RawRecord, choose_split


def find_dataset(repo_id: str, revision: Optional[str]) -> Optional[Path]:
    """The cached snapshot folder of a dataset repo at a revision (a branch, tag or commit), or None."""
    from pipeline.core.hub_cache import hub_cache_dir

    repo = hub_cache_dir() / ("datasets--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    if commit and (repo / "snapshots" / commit).is_dir():
        return repo / "snapshots" / commit
    snapshots = repo / "snapshots"
    if commit and snapshots.is_dir():  # a short commit
        found = [p for p in snapshots.iterdir() if p.name.startswith(commit)]
        if len(found) == 1:
            return found[0]
    return None


def hub_records(reference: str, split: Optional[str], subset: Optional[str], allow_download: bool,
                key: str) -> Iterator[RawRecord]:
    from pipeline.core.hub_cache import parse_repo_reference

    where = f"{key}={reference!r}"
    parsed = parse_repo_reference(reference.strip())
    assert parsed is not None, "sources.source_kind only calls a Hub id one"
    repo_id, revision = parsed
    folder = find_dataset(repo_id, revision)
    if folder is None:
        if not allow_download:
            raise UserError(f"{where}: not a file here, and Hub dataset {repo_id}"
                            f"{'@' + revision if revision else ''} is not in the local Hugging Face cache; "
                            "give a file, or set runtime.allow_download=true to fetch it")
        folder = _download(repo_id, revision, where)
    return _read(folder, repo_id, split, subset, where)


def _download(repo_id: str, revision: Optional[str], where: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision))
    except Exception as error:  # offline, not found, gated: one line
        raise UserError(f"{where}: could not download Hub dataset {repo_id}: "
                        f"{type(error).__name__}: {first_line(str(error))}") from None


def _read(folder: Path, repo_id: str, split: Optional[str], subset: Optional[str], where: str) -> Iterator[RawRecord]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the snapshot is local: nothing to ask the Hub
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        subsets = datasets.get_dataset_config_names(str(folder))
    except Exception:  # a folder without configs: its files are the one subset
        subsets = []
    if subset is None and len(subsets) > 1:
        raise UserError(f"{where}: {repo_id} has the subsets {', '.join(subsets)}; choose one with dataset.subset=NAME")
    if subset is not None and subsets and subset not in subsets:
        raise UserError(f"dataset.subset={subset!r}: {repo_id} has the subsets {', '.join(subsets)}")
    try:
        splits = datasets.load_dataset(str(folder), name=subset, streaming=True)
    except Exception as error:
        raise UserError(f"{where}: {repo_id} cannot be read from {folder}: "
                        f"{type(error).__name__}: {first_line(str(error))}") from None
    split = choose_split(split, list(splits), f"{repo_id}{'/' + subset if subset else ''} has the splits")
    label = f"{repo_id}{'/' + subset if subset else ''} [{split}]"
    rows = iter(splits[split])
    number = 0
    while True:
        try:  # streamed: a damaged file in the snapshot shows up while its rows are read
            record = next(rows, None)
        except Exception as error:  # noqa: BLE001 - the datasets library's errors vary by file format
            raise UserError(f"{where}: {label} cannot be read after row {number} (a file in {folder} is damaged: "
                            f"{type(error).__name__}: {first_line(str(error))})") from None
        if record is None:
            return
        number += 1
        yield RawRecord(f"{label} row {number}", number, record)
