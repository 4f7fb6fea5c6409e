"""Read the user's text files (datasets, history files, a model folder's JSON and templates) so that
every problem with one is a single UserError naming the file, and the line where there is one.

What can be wrong with such a file, whichever it is: it is missing, it is a folder, it cannot be
opened, it is not UTF-8 text (`path:line: not UTF-8 text (byte 0xff at column 3)`), or it is not
the JSON it should be (`path:line: not valid JSON: ... (column N)`). Line-oriented files (a dataset)
may be compressed with gzip, bzip2 or xz: they are recognised by their first bytes, whatever
their name, and read as the text they hold. Zstandard has no reader in this Python's standard
library, so a zstd file is refused with the command that unpacks it.

`where` is how the caller names the file for the user (a config key such as
`session.history='chat.json'`, or empty for a file inside a model folder): it starts the message,
and a problem inside the file follows it as `path:line: ...`. A dataset's lines, read one by one
(`read_lines`), are reported as `path:line: ...` alone, as the dataset's own checks are.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

from pipeline.core.errors import UserError

# first bytes of the compressed formats a line-oriented file may come in, and how to open each
_GZIP, _BZIP2, _XZ, _ZSTD = b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd"
_OPENERS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark: some editors write it; it is not part of the text


def check_file(path: Path, where: str, expected: str = "a file") -> None:
    """A UserError unless `path` is a file that exists (a folder or a missing path named as such)."""
    prefix = _prefix(where)
    if path.is_dir():
        raise UserError(f"{prefix}{path} is a folder, expected {expected}")
    if not path.exists():
        raise UserError(f"{prefix}file not found: {path.absolute()} (expected {expected})")


def compression(path: Path) -> Optional[str]:
    """gzip, bzip2, xz or zstd when the file starts the way those formats do; None for anything else."""
    with path.open("rb") as handle:
        head = handle.read(6)
    for name, magic in (("gzip", _GZIP), ("bzip2", _BZIP2), ("xz", _XZ), ("zstd", _ZSTD)):
        if head.startswith(magic):
            return name
    return None


def read_lines(path: Path, where: str, expected: str = "a text file") -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a text file, gzip/bzip2/xz-compressed or not.

    Lines are decoded one at a time, so a stray byte is reported with its line and column; a
    compressed file that ends early or is damaged is reported as such, with the line it reached."""
    check_file(path, where, expected)
    kind = _readable_compression(path)
    line_number = 0
    try:
        with _open_binary(path, kind) as handle:
            for line_number, raw in enumerate(handle, start=1):
                if line_number == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                yield line_number, decode(raw, path, line_number)
    except UserError:
        raise
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:  # gzip's bad deflate data is a zlib.error
        if not kind:
            raise UserError(f"{path}: cannot read it: {_reason(error)}") from None
        raise UserError(f"{path}:{line_number + 1}: the {kind} data is damaged or cut short ({_reason(error)}); "
                        "compress the file again or give it uncompressed") from None


def read_text(path: Path, where: str = "", expected: str = "a text file") -> str:
    """The whole text of a (small, uncompressed) file; a UserError naming path and line when it is not UTF-8."""
    check_file(path, where, expected)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{_prefix(where)}{path}: cannot read it: {_reason(error)}") from None
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise UserError(_prefix(where) + _not_utf8(path, line, column, data[error.start], compression(path))) from None


def read_json(path: Path, where: str = "", expected: str = "a JSON file") -> Any:
    """A JSON file's value; any problem (missing, a folder, not UTF-8, not JSON) is one line naming it."""
    text = read_text(path, where, expected)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{_prefix(where)}{path}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") \
            from None


def decode(raw: bytes, path: Path, line_number: int) -> str:
    """One line's bytes as text, or a UserError pointing at the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(_not_utf8(path, line_number, error.start + 1, raw[error.start], None)) from None


def _not_utf8(path: Path, line: int, column: int, byte: int, kind: Optional[str]) -> str:
    message = f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x} at column {column})"
    if kind:
        return f"{message}; it is {kind}-compressed, which this file cannot be: decompress it first"
    return f"{message}; save the file as UTF-8"


def _readable_compression(path: Path) -> Optional[str]:
    try:
        kind = compression(path)
    except OSError as error:
        raise UserError(f"{path}: cannot read it: {_reason(error)}") from None
    if kind == "zstd":
        raise UserError(f"{path}: zstd-compressed files cannot be read here (no zstd in this Python); "
                        f"decompress it first (zstd -d {path.name}) or compress it with gzip")
    return kind


def _open_binary(path: Path, kind: Optional[str]) -> BinaryIO:
    return _OPENERS[kind](path, "rb") if kind else path.open("rb")  # type: ignore[return-value]


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
