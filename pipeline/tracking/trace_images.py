"""Images in MLflow traces: a small copy of each image part, where MLflow's chat view shows it.

The transcript keeps each image part's description (pipeline.data.media.describe: path or URL,
sha256, size), never its bytes. For a trace, `with_images` gives each message that has image parts
an OpenAI-style content list: one `image_url` part per image, holding a thumbnail as a data URL,
then the text. MLflow 3's trace chat view renders `image_url` parts as pictures (a data URL
inline; MLflow's own trace attachments would cost an upload and a trace-info lookup per image,
where this costs nothing beyond the span write). The description stays in the message's `media`
beside it, so the path and sha256 are still there.

Thumbnails, not the images: at most THUMBNAIL_SIDE pixels a side, PNG (JPEG when the PNG is
larger than MAX_BYTES) and never more than MAX_BYTES, so a 2,000-image run adds at most ~2,000 x
MAX_BYTES to the trace store. An image is read from the file the run read (the URL's cached copy
for a fetched one) and shown only while its sha256 is still the recorded one: a file changed or
gone since is left out, never shown in its new state.

Not here: audio (no thumbnail for a clip; its description stays), data-URL parts (the transcript
does not keep their bytes), and writing the spans (pipeline.tracking.traces).
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any, Optional

THUMBNAIL_SIDE = 128  # pixels: enough to tell what the model was shown
MAX_BYTES = 16 * 1024  # per image, encoded; larger ones are left out


def with_images(messages: Any, thumbnails: dict[str, Optional[str]]) -> Any:
    """`messages` (as the transcript holds them) with each image part shown as an image_url part.

    `thumbnails` caches data URLs by sha256 across the traces of one run (the same image in many
    records or turns is read and encoded once)."""
    if not isinstance(messages, list):
        return messages
    shown = []
    for message in messages:
        media = message.get("media") if isinstance(message, dict) else None
        if not media or not isinstance(message.get("content"), str):
            shown.append(message)
            continue
        urls = [url for url in (_thumbnail(part, thumbnails) for part in media
                                if isinstance(part, dict) and part.get("type") == "image") if url]
        if not urls:
            shown.append(message)
            continue
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
        if message["content"]:
            content.append({"type": "text", "text": message["content"]})
        shown.append({**message, "content": content})
    return shown


def thumbnail(data: bytes) -> Optional[str]:
    """A data URL of the image's thumbnail, or None when even a JPEG of it is over MAX_BYTES."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")  # what the model was given (pipeline.data.media.decode_image)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    for kind, options in (("png", {"optimize": True}), ("jpeg", {"quality": 80})):
        out = io.BytesIO()
        image.save(out, format=kind, **options)
        if out.tell() <= MAX_BYTES:
            return f"data:image/{kind};base64,{base64.b64encode(out.getvalue()).decode()}"
    return None


def _thumbnail(part: dict[str, Any], thumbnails: dict[str, Optional[str]]) -> Optional[str]:
    sha, path = part.get("sha256"), part.get("path")
    if not sha or not path:
        return None
    if sha not in thumbnails:
        thumbnails[sha] = _read_thumbnail(Path(path), sha)
    return thumbnails[sha]


def _read_thumbnail(path: Path, sha: str) -> Optional[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha:  # changed since the run read it: not what the model saw
        return None
    try:
        return thumbnail(data)
    except Exception:  # noqa: BLE001 - a picture that cannot be redrawn is left out; the trace still gets written
        return None
