"""Image and audio parts as the dataset reader and the Python API check them (no model needed)."""

from __future__ import annotations

import base64
import json

import pytest

from pipeline.core.config import DatasetConfig
from pipeline.core.errors import UserError
from pipeline.data.dataset import load_samples
from pipeline.data.media import describe, read_bytes, user_parts
from pipeline.data.prompts import as_dict, from_dict, template_dict
from tests.conftest import write_jsonl
from tests.helpers.tiny_media_models import png, wav


def one_part(tmp_path, part: dict, **dataset):
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"id": "a", "prompt": "plain"},
        {"id": "pic", "messages": [{"role": "user", "content": [part, {"type": "text", "text": "What?"}]}]}])
    return load_samples(DatasetConfig(path=str(path), **dataset))


def test_an_image_by_path_is_checked_decoded_and_hashed(tmp_path):
    png(tmp_path / "pics" / "one.png", 12)
    samples = one_part(tmp_path, {"type": "image", "path": "pics/one.png"})
    (part,) = samples[1].messages[0].media
    data = (tmp_path / "pics" / "one.png").read_bytes()
    assert part.path == str((tmp_path / "pics" / "one.png").resolve())
    assert (part.width, part.height, part.size_bytes) == (32, 32, len(data))
    import hashlib
    assert part.sha256 == hashlib.sha256(data).hexdigest()
    assert read_bytes(part) == data


@pytest.mark.parametrize("part, problem", [
    ({"type": "image", "path": "missing.png"}, "data.jsonl:2: messages[0].content[0]: image 'missing.png' does not exist"),
    ({"type": "image", "path": "notes.png"}, "data.jsonl:2: messages[0].content[0]: image 'notes.png' is not a readable image"),
    ({"type": "audio", "path": "notes.png"}, "data.jsonl:2: messages[0].content[0]: audio 'notes.png' is not a readable audio clip"),
    ({"type": "image", "path": "../outside.png"}, "is outside the dataset's folder and dataset.media_dirs"),
    ({"type": "image", "url": "https://example.com/cat.png"}, "nothing is downloaded unless runtime.allow_download=true"),
    ({"type": "image", "url": "ftp://example.com/cat.png"}, "only local paths, data: URLs and http(s) URLs"),
    ({"type": "image", "url": "data:image/png;base64,@@@"}, "data URL's base64 data is not valid base64"),
    ({"type": "image", "url": "data:image/png,abc"}, "must be data:<type>;base64,<data>"),
    ({"type": "image", "path": "big.png"}, "over the limit of 0.0 MB (dataset.max_media_mb)"),
])
def test_a_bad_part_is_one_line_naming_file_line_and_part(tmp_path, part, problem):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.png").write_text("not an image at all")
    png(tmp_path / "outside.png", 1)
    png(tmp_path / "data" / "big.png", 1, size=256)
    limit = {"max_media_mb": 0.0001} if part.get("path") == "big.png" else {}
    with pytest.raises(UserError) as raised:
        one_part(tmp_path / "data", part, **limit)
    message = str(raised.value)
    assert problem in message and "\n" not in message


def test_media_dirs_lets_a_named_folder_in(tmp_path):
    png(tmp_path / "shared" / "x.png", 5)
    (tmp_path / "data").mkdir()
    part = {"type": "image", "path": str(tmp_path / "shared" / "x.png")}
    with pytest.raises(UserError, match="outside the dataset's folder"):
        one_part(tmp_path / "data", part)
    samples = one_part(tmp_path / "data", part, media_dirs=[str(tmp_path / "shared")])
    assert samples[1].messages[0].media[0].width == 32


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    png(tmp_path / "secret.png", 7)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(UserError, match="outside the dataset's folder"):
        one_part(tmp_path / "data", {"type": "image", "path": "link.png"})


def test_data_urls_and_allowed_urls(tmp_path):
    data = png(tmp_path / "p.png", 3).read_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    (part,) = one_part(tmp_path, {"type": "image", "url": url})[1].messages[0].media
    assert read_bytes(part) == data and part.mime == "image/png" and part.width == 32
    path = write_jsonl(tmp_path / "u.jsonl", [{"id": "u", "messages": [{"role": "user", "content": [
        {"type": "image", "url": "https://example.com/cat.png"}]}]}])
    (remote,) = load_samples(DatasetConfig(path=str(path)), allow_download=True)[0].messages[0].media
    assert remote.source == "https://example.com/cat.png" and remote.sha256 is None  # fetched by a backend, later


def test_the_transcript_keeps_path_and_sha256_never_bytes(tmp_path):
    data = png(tmp_path / "p.png", 3).read_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    samples = one_part(tmp_path, {"type": "image", "url": url})
    by_url = as_dict(samples[1].messages[0])
    assert by_url["media"][0]["source"].startswith("data URL (image/png,") and url not in json.dumps(by_url)
    samples = one_part(tmp_path, {"type": "image", "path": "p.png"})
    saved = as_dict(samples[1].messages[0])
    assert saved["media"] == [describe(samples[1].messages[0].media[0])]
    assert saved["media"][0]["path"].endswith("p.png") and len(saved["media"][0]["sha256"]) == 64
    assert set(saved["media"][0]) == {"type", "path", "sha256", "width", "height"}
    assert base64.b64encode(data).decode()[:40] not in json.dumps(saved)
    again = from_dict(json.loads(json.dumps(saved)))  # a resumed run's history
    assert again.media[0].sha256 == saved["media"][0]["sha256"] and read_bytes(again.media[0]) == data
    assert template_dict(samples[1].messages[0])["content"] == [{"type": "image"}, {"type": "text", "text": "What?"}]


def test_audio_parts_are_decoded_once(tmp_path):
    wav(tmp_path / "tone.wav", 440, seconds=0.25)
    (part,) = one_part(tmp_path, {"type": "audio", "path": "tone.wav"})[1].messages[0].media
    assert part.seconds == 0.25 and part.kind == "audio"


def test_user_parts_take_any_path_but_check_it(tmp_path):
    (part,) = user_parts([str(png(tmp_path / "anywhere" / "x.png", 1))], [])
    assert part.width == 32
    with pytest.raises(UserError, match=r"images\[0\]: image '.*nope.png' does not exist"):
        user_parts([str(tmp_path / "nope.png")], [])
    with pytest.raises(UserError, match="audio.*not a readable audio clip"):
        user_parts([], [str(tmp_path / "anywhere" / "x.png")])


def test_a_server_gets_images_as_data_urls_and_audio_as_input_audio(tmp_path):
    from pipeline.backends.openai.backend import to_openai_messages
    from pipeline.core.records import Message

    picture = png(tmp_path / "p.png", 4)
    clip = wav(tmp_path / "t.wav", 440, seconds=0.1)
    parts = user_parts([str(picture), "https://example.com/cat.png"], [str(clip)], allow_download=True)
    (sent,) = to_openai_messages([Message("user", "What?", parts)])
    image, remote, audio, text = sent["content"]
    assert image == {"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()}}
    assert remote == {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    assert audio == {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip.read_bytes()).decode(),
                                                            "format": "wav"}}
    assert text == {"type": "text", "text": "What?"}
    picture.write_bytes(picture.read_bytes() + b"changed")  # after the check: refused, not sent
    with pytest.raises(UserError, match="changed since the plan checked it"):
        to_openai_messages([Message("user", "What?", parts[:1])])
