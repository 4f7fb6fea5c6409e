"""Read a dataset's raw records, whatever holds them: a JSONL, JSON, CSV or Parquet file, or a Hugging Face
dataset in the local cache (pipeline.data.hub).

Each record comes with `where`: the file and line (JSONL, CSV), or the file or split and row (JSON, Parquet,
Hub), so that a mistake in it is reported as `where: what is wrong`. A file is recognised by its
suffix (.jsonl/.ndjson, .json, .csv/.tsv, .parquet; a .gz/.bz2/.xz suffix after it is read compressed);
anything else that exists is read as JSONL, as always. A path that does not exist and is shaped
like `org/name[@revision]` is a Hub dataset id.

What a record means (which field is the prompt, templates) is pipeline.data.mapping's business.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.core.errors import UserError
from pipeline.core.text_files import read_lines

JSONL = (".jsonl", ".ndjson")
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
              ".parquet": "parquet"}
COMPRESSED = (".gz", ".bz2", ".xz")


@dataclass(frozen=True)
class RawRecord:
    where: str  # file:line, or file / split and row, for messages
    number: int  # its place in the source, from 1 (the JSONL line; a row otherwise): the id when it has none
    data: Any  # what the source holds for it (a JSON object, normally)


def source_kind(path: str) -> str:
    """jsonl, json, csv, tsv, parquet, or hub (a dataset id that is not a file here)."""
    file = Path(path).expanduser()
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in FILE_KINDS:
        return FILE_KINDS[suffixes[-1]]
    if file.exists():
        return "jsonl"
    from pipeline.core.hub_cache import parse_repo_reference  # pure: a shape check, no network

    shaped_like_path = path.startswith(("/", ".", "~", "\\")) or path.count("/") >= 2
    if not shaped_like_path and parse_repo_reference(path.strip()) is not None:
        return "hub"
    return "jsonl"  # read_lines says the file is not found


def read_records(path: str, split: Optional[str] = None, subset: Optional[str] = None,
                 allow_download: bool = False, key: str = "dataset.path") -> Iterator[RawRecord]:
    """The records of a source, in order. `key` names the setting in messages (dataset.fewshot.path, say)."""
    kind = source_kind(path)
    if kind != "hub" and subset is not None:
        raise UserError(f"dataset.subset={subset!r}: only Hub datasets have subsets; {key}={path!r} is a file")
    if kind in ("jsonl",):
        _no_split(split, path, key)
        return _jsonl(path, key)
    if kind == "json":
        return _json(path, split, key)
    if kind in ("csv", "tsv"):
        _no_split(split, path, key)
        return _csv(path, key, "\t" if kind == "tsv" else ",")
    if kind == "parquet":
        _no_split(split, path, key)
        return _parquet(path, key)
    from pipeline.data.hub import hub_records

    return hub_records(path, split, subset, allow_download, key)


def _no_split(split: Optional[str], path: str, key: str) -> None:
    if split is not None:
        raise UserError(f"dataset.split={split!r}: {key}={path!r} is one file, with no splits; "
                        "set dataset.split=null (a JSON file of {split: [records]} or a Hub dataset has splits)")


def _jsonl(path: str, key: str) -> Iterator[RawRecord]:
    file = Path(path).expanduser()
    with closing(read_lines(file, f"{key}={path!r}", "a .jsonl file of {id, prompt | messages, reference}")) as lines:
        for line_number, line in lines:
            if not line.strip():
                continue
            where = f"{file}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: not valid JSON: {error.msg} (column {error.colno})") from None
            yield RawRecord(where, line_number, record)


def _text(path: str, key: str, expected: str) -> str:
    file = Path(path).expanduser()
    with closing(read_lines(file, f"{key}={path!r}", expected)) as lines:
        return "".join(line for _, line in lines)


def _json(path: str, split: Optional[str], key: str) -> Iterator[RawRecord]:
    """A JSON list of records, or an object of splits {name: [records]} (or {"data": [...]})."""
    file = Path(path).expanduser()
    text = _text(path, key, "a .json file: a list of records, or {split: [records]}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{file}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") from None
    where = str(file)
    if isinstance(data, dict):
        splits = [name for name, value in data.items() if isinstance(value, list)]
        if not splits:
            fields = ", ".join(list(map(str, data))[:8]) or "none"
            raise UserError(f"{file}: a JSON object with no list of records in it (its keys: {fields}); expected a "
                            "list of records [{...}, ...], or an object of splits {\"test\": [{...}, ...]}")
        split = choose_split(split, splits, f"{file} holds the splits")
        data, where = data[split], f"{file} [{split}]"
    elif split is not None:
        _no_split(split, path, key)
    if not isinstance(data, list):
        raise UserError(f"{file}: expected a JSON list of records or an object of splits, got {type(data).__name__}")
    for index, record in enumerate(data, 1):
        yield RawRecord(f"{where} record {index}", index, record)


def _csv(path: str, key: str, delimiter: str) -> Iterator[RawRecord]:
    """A header row of field names, then a record a row (a quoted field may span lines: the row's first line is named)."""
    file = Path(path).expanduser()
    reader = csv.reader(io.StringIO(_text(path, key, "a .csv file with a header row"), newline=""),
                        delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                raise UserError(f"{file}:{line}: {len(row)} fields, but the header has {len(header)} "
                                f"({', '.join(header)})")
            yield RawRecord(f"{file}:{line}", line, dict(zip(header, row)))
    except csv.Error as error:
        raise UserError(f"{file}:{reader.line_num}: not valid CSV: {error}") from None


def _parquet(path: str, key: str) -> Iterator[RawRecord]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{key}={path!r}: {'is a folder' if file.is_dir() else 'file not found'}: {file.absolute()}")
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
    except Exception as error:  # pyarrow's errors for a file that is not Parquet vary by version
        raise UserError(f"{file}: not a Parquet file ({str(error).splitlines()[0]})") from None
    number = 0
    batches = reader.iter_batches(batch_size=1024)
    while True:
        try:  # the pages are decoded batch by batch: damaged data shows up here, not when the file is opened
            batch = next(batches, None)
        except Exception as error:  # pyarrow's OSError / ArrowInvalid, by codec and version
            raise UserError(f"{file}: the Parquet data from row {number + 1} on is damaged "
                            f"({str(error).splitlines()[0]}); write the file again") from None
        if batch is None:
            return
        for record in batch.to_pylist():
            number += 1
            yield RawRecord(f"{file} row {number}", number, record)


def choose_split(split: Optional[str], names: list[str], holder: str) -> str:
    """`dataset.split`, or the only split there is; anything else is one line listing the splits
    (`holder` says whose: "<file> holds the splits", "<repo> has the splits")."""
    if split is None and len(names) == 1:
        return names[0]
    if split not in names:
        named = f"dataset.split={split!r}" if split is not None else "dataset.split=null"
        raise UserError(f"{named}: {holder} {', '.join(names) or '(none)'}; choose one with dataset.split=NAME")
    return split
