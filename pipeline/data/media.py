"""Image and audio parts of messages: where their bytes may come from, checked once, read back later.

A part names a local path, a data URL (``data:image/png;base64,...``) or an http(s) URL.
`check_part` runs while the dataset is read, at plan time, before any weight loads: it resolves a
path (a dataset's parts only under the dataset's folder or a folder named in dataset.media_dirs;
a path a user hands the Python API or the chat directly is theirs to name), refuses a URL unless
runtime.allow_download=true, keeps each part under dataset.max_media_mb, decodes the bytes once
(Pillow for images, soundfile for audio) and records the sha256 and what the decoding found. A URL
is fetched then only when the backend hands the rules a `fetch` (the transformers backend's
pipeline.backends.media_fetch, which keeps one file per URL in a cache): the part
then has that file as its path, checked like any other, and its URL as its source.
A file that is missing, unreadable or not an image / audio clip is a UserError naming where the
part was written (file:line of the dataset, or the argument).

Backends read the bytes again with `read_bytes` and decode them with `decode_image` /
`decode_audio`. `describe` is what transcripts and MLflow keep of a part: its path (or the kind of
data URL) and sha256, never the bytes.

Not here: fetching an http(s) URL (a backend's business: nothing above backends/ opens a
connection; the backend passes its fetcher in), and whether a model takes a kind of part (the plan's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from pipeline.core.errors import UserError, first_line
from pipeline.core.redact import hide_credentials
from pipeline.core.records import MediaPart

DEFAULT_MAX_MB = 20.0
DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<base64>;base64)?,",
                      re.IGNORECASE)
AUDIO_SAMPLE_RATE = 16000  # what the audio processors of the supported models expect, and what clips are resampled to
# fetch(url, kind, what, max_bytes, check) -> the local file holding the URL's bytes (a backend's; see MediaRules.fetch)
Fetcher = Callable[[str, str, str, int, Callable[[bytes], object]], Path]


@dataclass(frozen=True)
class MediaRules:
    """Where a part's bytes may come from, and how many there may be."""

    roots: tuple[Path, ...] = ()  # a local path must lie under one of these; () allows any path
    max_bytes: int = int(DEFAULT_MAX_MB * 2**20)
    allow_download: bool = False  # http(s) URLs (fetched by the backend that needs the bytes)
    base: Optional[Path] = None  # relative paths are taken from here (the dataset's folder); else the cwd
    fetch: Optional[Fetcher] = None  # a backend that reads bytes fetches URLs with this; None: URLs are passed on


def dataset_rules(dataset_path: Path, media_dirs: Sequence[str], max_mb: float, allow_download: bool,
                  fetch: Optional[Fetcher] = None) -> MediaRules:
    """The rules for a dataset file's parts: under its folder or a dataset.media_dirs folder."""
    folder = dataset_path.expanduser().resolve().parent
    roots = (folder, *(Path(d).expanduser().resolve() for d in media_dirs))
    return MediaRules(roots=roots, max_bytes=int(max_mb * 2**20), allow_download=allow_download, base=folder,
                      fetch=fetch)


def check_part(part: MediaPart, rules: MediaRules, where: str) -> MediaPart:
    """The part with its resolved path (if a file), sha256 and decoded facts; a UserError naming
    `where` for anything that makes it unusable."""
    source = part.source
    if source.startswith("data:"):
        data, mime = _data_url(source, part.kind, where)
        if len(data) > rules.max_bytes:
            raise UserError(f"{where}: the {part.kind} data URL holds {_mb(len(data))}, over the limit of "
                            f"{_mb(rules.max_bytes)} (dataset.max_media_mb)")
        facts = _decode_facts(part.kind, data, f"{where}: the {part.kind} data URL")
        return replace(part, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), mime=mime, **facts)
    if re.match(r"[a-z][a-z0-9+.-]*://", source, re.IGNORECASE):
        if not source.lower().startswith(("http://", "https://")):
            raise UserError(f"{where}: {part.kind} {source!r}: only local paths, data: URLs and http(s) URLs are "
                            "read")
        if not rules.allow_download:
            raise UserError(f"{where}: {part.kind} {source!r} is a URL, and nothing is downloaded unless "
                            "runtime.allow_download=true; use a local file or a data: URL")
        if rules.fetch is None:
            return part  # passed on as it is (a server backend fetches it)
        what = f"{where}: {part.kind} {hide_credentials(source)!r}"  # user:password@ of a URL stays out of logs
        fetched = rules.fetch(source, part.kind, what, rules.max_bytes,
                              lambda data: _decode_facts(part.kind, data, what))
        return _checked_file(part, fetched, hide_credentials(source), rules, where)
    path = _local_path(source, rules, part.kind, where)
    return _checked_file(part, path, source, rules, where)


def _checked_file(part: MediaPart, path: Path, source: str, rules: MediaRules, where: str) -> MediaPart:
    """The part read from `path` (a local file, or the one a URL was fetched into): size, decoding, sha256.
    `source` only names the part in messages (a URL's credentials masked)."""
    try:
        size = path.stat().st_size
        if size > rules.max_bytes:
            raise UserError(f"{where}: {part.kind} {source!r} is {_mb(size)}, over the limit of "
                            f"{_mb(rules.max_bytes)} (dataset.max_media_mb)")
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{where}: cannot read {part.kind} {source!r} ({path}): {error.strerror or error}") from None
    facts = _decode_facts(part.kind, data, f"{where}: {part.kind} {source!r}")
    return replace(part, path=str(path), sha256=hashlib.sha256(data).hexdigest(), size_bytes=size, **facts)


def user_parts(images: Sequence[str], audio: Sequence[str], max_mb: float = DEFAULT_MAX_MB,
               allow_download: bool = False, fetch: Optional[Fetcher] = None) -> tuple[MediaPart, ...]:
    """Parts a user named directly (the Python API, the chat's /image): any local path, checked the same way."""
    rules = MediaRules(max_bytes=int(max_mb * 2**20), allow_download=allow_download, fetch=fetch)
    checked = [check_part(MediaPart("image", str(i)), rules, f"images[{n}]") for n, i in enumerate(images)]
    checked += [check_part(MediaPart("audio", str(a)), rules, f"audio[{n}]") for n, a in enumerate(audio)]
    return tuple(checked)


def read_bytes(part: MediaPart) -> bytes:
    """The part's bytes (a checked file or data URL), refusing a file changed since it was checked."""
    if part.source.startswith("data:"):
        return _data_url(part.source, part.kind, "media part")[0]
    if part.path is None:
        raise UserError(f"{part.kind} {part.source!r} was not checked (or is a URL this backend does not fetch)")
    try:
        data = Path(part.path).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {part.kind} {part.path}: {error.strerror or error}") from None
    if part.sha256 is not None and hashlib.sha256(data).hexdigest() != part.sha256:
        raise UserError(f"{part.kind} {part.path} changed since the plan checked it (sha256 differs); run again")
    return data


def decode_image(data: bytes) -> Any:
    """A PIL image in RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def decode_audio(data: bytes, sample_rate: int = AUDIO_SAMPLE_RATE) -> Any:
    """A mono float32 numpy array at `sample_rate` (linear resampling: enough for speech models' inputs)."""
    import numpy as np
    import soundfile

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != sample_rate and len(mono):
        positions = np.arange(int(len(mono) * sample_rate / rate)) * (rate / sample_rate)
        mono = np.interp(positions, np.arange(len(mono)), mono).astype(np.float32)
    return mono


def describe(part: MediaPart) -> dict[str, Any]:
    """What a transcript keeps of a part: where it came from and its sha256, not its bytes."""
    if part.source.startswith("data:"):
        where = {"source": f"data URL ({part.mime or 'no type'}, {part.size_bytes} bytes)"}
    elif part.path is not None and _is_url(part.source):  # fetched: the URL, and the file it was fetched into
        where = {"url": hide_credentials(part.source), "path": part.path}
    elif part.path is not None:
        where = {"path": part.path}
    else:
        where = {"url": hide_credentials(part.source)}
    facts = {key: value for key, value in (("width", part.width), ("height", part.height),
                                           ("seconds", part.seconds)) if value is not None}
    return {"type": part.kind, **where, "sha256": part.sha256, **facts}


def from_description(data: dict[str, Any]) -> MediaPart:
    """A part back from `describe` (a resumed run's history): a data URL's bytes are gone, so it keeps
    only its description."""
    source = data.get("url") or data.get("path") or data.get("source") or ""
    return MediaPart(data["type"], source, path=data.get("path"), sha256=data.get("sha256"),
                     width=data.get("width"), height=data.get("height"), seconds=data.get("seconds"))


# --- inside ---------------------------------------------------------------------------------------

def _local_path(source: str, rules: MediaRules, kind: str, where: str) -> Path:
    raw = Path(source).expanduser()
    if not raw.is_absolute():
        raw = (rules.base or Path.cwd()) / raw
    path = raw.resolve()  # symlinks and .. resolved: a link cannot lead outside the allowed folders
    if rules.roots and not any(path.is_relative_to(root) for root in rules.roots):
        allowed = ", ".join(str(root) for root in rules.roots)
        raise UserError(f"{where}: {kind} {source!r} ({path}) is outside the dataset's folder and dataset.media_dirs "
                        f"({allowed}); move it there or add its folder to dataset.media_dirs")
    if not path.exists():
        raise UserError(f"{where}: {kind} {source!r} does not exist ({path})")
    if not path.is_file():
        raise UserError(f"{where}: {kind} {source!r} is not a file ({path})")
    return path


def _data_url(source: str, kind: str, where: str) -> tuple[bytes, Optional[str]]:
    match = DATA_URL.match(source)
    if match is None or not match.group("base64"):
        raise UserError(f"{where}: the {kind} data URL must be data:<type>;base64,<data>")
    try:
        return base64.b64decode(source[match.end():], validate=True), match.group("mime")
    except (binascii.Error, ValueError):
        raise UserError(f"{where}: the {kind} data URL's base64 data is not valid base64") from None


def _decode_facts(kind: str, data: bytes, what: str) -> dict[str, Any]:
    """Decode once: the image's size or the clip's length; a UserError when the bytes are not one."""
    if kind == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return {"width": image.width, "height": image.height}
        except UnidentifiedImageError:
            raise UserError(f"{what} is not a readable image: not in a format Pillow reads (PNG, JPEG, GIF, WebP, "
                            "BMP, TIFF, ...)") from None
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise UserError(f"{what} is not a readable image: {_library_reason(error)}") from None
    try:
        import soundfile
    except ImportError:
        raise UserError(f"{what}: audio needs the soundfile package (pip install soundfile)") from None
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError, soundfile.LibsndfileError) as error:
        raise UserError(f"{what} is not a readable audio clip: {_library_reason(error)}") from None
    return {"seconds": round(len(samples) / rate, 3)}


def _library_reason(error: BaseException) -> str:
    """The decoder's reason, without the in-memory buffer it names (`<_io.BytesIO object at 0x...>`): the
    message names the part's file or URL already."""
    text = re.sub(r"(Error opening )?<_io\.BytesIO object at 0x[0-9a-fA-F]+>:?\s*", "", first_line(error)).strip()
    return text or type(error).__name__


def _is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
