"""Fetching an image or audio URL once, for a model in this process (runtime.allow_download=true).

A model in this process reads bytes, so an http(s) part must become a local file before the plan
can decode it, count its tokens and record its sha256. `fetch` does that at plan time, before any
weight loads: a URL already in the cache (`cache_dir()/media`, one file per URL, named by the
sha256 of the URL) is not fetched again, so a resumed run reads what the first run read; a new
one is fetched with a timeout, at most `max_bytes` of it, refused unless the server calls it an
image / audio clip (or says nothing more than octet-stream) and unless `check` (the caller's
decoding) accepts the bytes, then written atomically (a temporary file renamed into place), so
the cache never holds a half-written or undecodable file. Every failure is one UserError line.

Not here: deciding whether URLs may be fetched (pipeline.data.media refuses them without
runtime.allow_download), recording the sha256 (pipeline.data.media.check_part), or a server
backend's URLs (passed on to the server as they are). A URL's `user:password@` goes as HTTP basic
auth, to that host only (not to one it redirects to); it is masked in every line and file. This
module is the HTTP client of the in-process kinds (transformers, vllm); nothing above pipeline/backends/ opens a
connection.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from pipeline.core.digest import cache_dir
from pipeline.core.errors import UserError
from pipeline.core.redact import hide_credentials

if TYPE_CHECKING:
    from pipeline.core.config import Config
    from pipeline.data.media import Fetcher

TIMEOUT_S = 30.0  # per connection attempt and per read: a stalled server is an error, not a hung plan
CHUNK = 1 << 16
# what a server may call the bytes besides image/* or audio/*: the decoding then decides
UNTYPED = ("", "application/octet-stream", "binary/octet-stream")
EXTRA_TYPES = {"audio": ("application/ogg",)}


def fetcher(config: "Config") -> Optional["Fetcher"]:
    """`fetch` when URLs may be fetched (runtime.allow_download=true); None when they may not (pipeline.data.media
    refuses them). A kind whose model reads bytes in this process offers this as its BackendKind.media_fetcher; a
    server backend passes URLs on as they are."""
    return fetch if config.runtime.allow_download else None


def media_cache() -> Path:
    """Where fetched media live: $PIPELINE_CACHE_DIR/media, else ~/.cache/pipeline/media."""
    return cache_dir() / "media"


def cached_path(url: str) -> Path:
    return media_cache() / hashlib.sha256(url.encode()).hexdigest()


def fetch(url: str, kind: str, what: str, max_bytes: int, check: Callable[[bytes], object]) -> Path:
    """The local file holding `url`'s bytes, fetched now unless the cache has it.

    `what` starts each error line (the dataset file and line, the part); `check(data)` raises a
    UserError for bytes that are not a readable `kind` (they are then not kept)."""
    path = cached_path(url)
    if path.is_file():
        return path
    data, content_type = _download(url, kind, what, max_bytes)
    check(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, data)
    _write_atomically(path.with_name(path.name + ".json"), json.dumps({
        "url": hide_credentials(url), "content_type": content_type, "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "fetched_at": time.time()}, indent=1).encode())
    return path


def _download(url: str, kind: str, what: str, max_bytes: int) -> tuple[bytes, str]:
    import urllib.error
    import urllib.request

    address, authorization = _credentials_apart(url)
    request = urllib.request.Request(address, headers={"User-Agent": "pipeline-media-fetch"})
    if authorization:  # not passed on to wherever the server redirects (urllib copies only the other headers)
        request.add_unredirected_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            final = response.geturl()
            if not final.lower().startswith(("http://", "https://")):
                raise UserError(f"{what}: the server redirected to {final!r}; only http(s) URLs are fetched")
            content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not (content_type.startswith(f"{kind}/") or content_type in UNTYPED + EXTRA_TYPES.get(kind, ())):
                raise UserError(f"{what}: the server sent {content_type} (HTTP Content-Type), not an {kind}; "
                                f"check the URL")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise UserError(f"{what} is {_mb(int(declared))}, over the limit of {_mb(max_bytes)} "
                                "(dataset.max_media_mb)")
            data = _read_at_most(response, max_bytes, what)
    except UserError:
        raise
    except urllib.error.HTTPError as error:
        raise UserError(f"{what} could not be fetched: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        text = "no answer within {:g} s".format(TIMEOUT_S) if isinstance(reason, socket.timeout) else \
            getattr(reason, "strerror", None) or str(reason)
        raise UserError(f"{what} could not be fetched: {text}") from None
    except (socket.timeout, TimeoutError):
        raise UserError(f"{what} could not be fetched: no answer within {TIMEOUT_S:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise UserError(f"{what} could not be fetched: {type(error).__name__}: {error}") from None
    return data, content_type


def _credentials_apart(url: str) -> tuple[str, Optional[str]]:
    """`http://user:pw@host/x` -> (`http://host/x`, its HTTP basic Authorization header); urllib would take
    `user:pw@` for part of the host name."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


def _read_at_most(response, max_bytes: int, what: str) -> bytes:
    """The body, refused as soon as it passes `max_bytes` (a missing or wrong Content-Length cannot sneak past)."""
    chunks, size = [], 0
    while True:
        chunk = response.read(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise UserError(f"{what} is over the limit of {_mb(max_bytes)} (dataset.max_media_mb)")
        chunks.append(chunk)


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)  # another process fetching the same URL replaces it with the same bytes
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"
