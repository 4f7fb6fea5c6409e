"""http(s) image parts for a model in this process: fetched once at plan time (runtime.allow_download=true)
from a real HTTP server on a free loopback port, cached and fingerprinted
(tests/tracking/test_traces.py shows the image reaching the MLflow trace)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.backends.media_fetch import cached_path, fetch
from pipeline.core.config import DatasetConfig
from pipeline.core.errors import UserError
from pipeline.data.dataset import load_samples
from tests.backends.test_media_models import run_here
from tests.conftest import ASSETS_DIR, only_run_dir, run_main, run_pipeline, snapshot, write_jsonl
from tests.helpers.tiny_media_models import png

DIGITS = ASSETS_DIR / "datasets" / "vision_digits"


class Served:
    """What the loopback server answers: path -> (status, content type, body); and the paths asked for."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.asked: list[str] = []
        self.base = ""
        self.logins: dict[str, str] = {}  # path -> the Authorization header it requires (HTTP basic auth)


@pytest.fixture
def web():
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            served.asked.append(self.path)
            status, kind, body = served.routes.get(self.path, (404, "text/plain", b"no such file"))
            if self.path in served.logins and self.headers.get("Authorization") != served.logins[self.path]:
                status, kind, body = 401, "text/plain", b"log in first"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


def one_error(err: str) -> bool:
    """One error line (the job's `error:` or the command-line check's `config error:`), and no traceback."""
    errors = [line for line in err.splitlines() if line.split(":")[0] in ("error", "config error")]
    return len(errors) == 1 and "Traceback" not in err


def url_part(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "url": url}, {"type": "text", "text": "What number is this?"}]}]


def test_a_url_is_fetched_once_into_the_cache_and_checked_like_a_file(web, tmp_path):
    image = (DIGITS / "digits-000.png").read_bytes()
    web.routes["/d.png"] = (200, "image/png", image)
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": "u", "messages": url_part(web.base + "/d.png")}])
    for _ in range(2):  # the second read finds it in the cache: no second request
        (part,) = load_samples(DatasetConfig(path=str(dataset)), True, fetch)[0].messages[0].media
    assert web.asked == ["/d.png"]
    assert part.source == web.base + "/d.png" and Path(part.path) == cached_path(web.base + "/d.png")
    assert Path(part.path).read_bytes() == image and part.sha256 == hashlib.sha256(image).hexdigest()
    assert (part.width, part.height) == (32, 32)
    assert not list(Path(part.path).parent.glob("*.part"))  # written atomically: no temporary left behind
    meta = json.loads(Path(part.path + ".json").read_text())
    assert meta["url"] == part.source and meta["sha256"] == part.sha256


@pytest.mark.parametrize("route, problem", [
    ("/gone.png", "could not be fetched: HTTP 404 Not Found"),
    ("/page.png", "the server sent text/html (HTTP Content-Type), not an image"),
    ("/broken.png", "is not a readable image"),
    ("/big.png", "over the limit of 0.0 MB (dataset.max_media_mb)"),
    ("closed", "could not be fetched: Connection refused"),
])
def test_a_url_that_is_no_image_is_one_line_naming_file_line_and_url(web, tmp_path, route, problem):
    web.routes["/page.png"] = (200, "text/html", b"<html>a login page</html>")
    web.routes["/broken.png"] = (200, "image/png", b"\x89PNG not really")
    web.routes["/big.png"] = (200, "image/png", png(tmp_path / "big.png", 3, size=256).read_bytes())
    url = f"http://127.0.0.1:{closed_port()}/x.png" if route == "closed" else web.base + route
    dataset = write_jsonl(tmp_path / "data.jsonl", [{"id": "u", "messages": url_part(url)}])
    limit = 0.0001 if route == "/big.png" else 20.0
    with pytest.raises(UserError) as raised:
        load_samples(DatasetConfig(path=str(dataset), max_media_mb=limit), True, fetch)
    message = str(raised.value)
    assert f"data.jsonl:1: messages[0].content[0]: image {url!r}" in message and problem in message
    assert "\n" not in message and not cached_path(url).exists()  # nothing kept of a refused URL


def test_a_vision_run_reads_a_url_as_the_file_and_a_resume_refuses_a_changed_one(
        web, tmp_path, monkeypatch, capsys):
    """End to end with the vision demo: the answer for the image by URL equals the one for the same file
    by path; a URL refused without allow_download, a 404, and a resume whose
    URL now serves another image stop with one line, exit 2."""

    local = DIGITS / "digits-000.png"
    web.routes["/d.png"] = (200, "image/png", local.read_bytes())
    url = web.base + "/d.png"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.png").write_bytes(local.read_bytes())
    dataset = write_jsonl(tmp_path / "data" / "both.jsonl", [
        {"id": "file", "messages": [{"role": "user", "content": [{"type": "image", "path": "d.png"},
                                                                 {"type": "text", "text": "What number is this?"}]}]},
        {"id": "url", "messages": url_part(url)}])
    common = ["runtime.model=vision-demo", f"dataset.path={dataset}", "runtime.device=cpu"]

    refused = tmp_path / "refused"
    refused.mkdir()
    monkeypatch.chdir(refused)
    code, err = run_main(common + ["tracking=none"], monkeypatch, capsys)
    assert code == 2 and "nothing is downloaded unless runtime.allow_download=true" in err and url in err
    assert one_error(err) and snapshot(refused) == {} and web.asked == []
    web.routes["/gone.png"] = (404, "text/plain", b"")
    gone = write_jsonl(tmp_path / "data" / "gone.jsonl", [{"id": "g", "messages": url_part(web.base + "/gone.png")}])
    code, err = run_main([*common, f"dataset.path={gone}", "runtime.allow_download=true", "tracking=none"],
                         monkeypatch, capsys)
    assert code == 2 and "gone.jsonl:1: messages[0].content[0]: image" in err and "HTTP 404" in err and one_error(err)
    assert snapshot(refused) == {}

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, err = run_here([*common, "runtime.allow_download=true", "tracking=none"], monkeypatch, capsys)
    assert code == 0, err
    run_dir = only_run_dir(cwd)
    rows = {row["sample_id"]: row for row in map(json.loads, (run_dir / "transcript.jsonl").read_text().splitlines())}
    assert rows["url"]["response"] == rows["file"]["response"]
    (by_url,), (by_path,) = rows["url"]["messages"][0]["media"], rows["file"]["messages"][0]["media"]
    assert by_url["url"] == url and by_url["sha256"] == by_path["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    inputs = json.loads((run_dir / "inputs.json").read_text())
    assert inputs["dataset.media"]["parts"][url] == by_url["sha256"]

    from pipeline.client import RuntimeClient  # the Python API fetches the same way

    client = RuntimeClient.from_overrides(["runtime.model=vision-demo", "runtime.device=cpu", "runtime.allow_download=true"])
    assert client.prompt("What number is this?", images=[url]).text == rows["file"]["response"]
    with pytest.raises(UserError, match="nothing is downloaded unless runtime.allow_download=true"):
        RuntimeClient.from_overrides(["runtime.model=vision-demo", "runtime.device=cpu"]).prompt("?", images=[url])
    client.close()

    # a resume that would read other content under the same URL is refused, naming the URL
    code, err = run_here([*common, "runtime.allow_download=true", "pipeline.until=load", "tracking=none",
                          "hydra.run.dir=runs/again"], monkeypatch, capsys)
    assert code == 0, err
    cached_path(url).unlink()  # the cache cleared, and the server now has another image there
    web.routes["/d.png"] = (200, "image/png", (DIGITS / "digits-001.png").read_bytes())
    before = snapshot(cwd / "runs" / "again")
    code, err = run_main(["resume=runs/again", "pipeline.until=execute"], monkeypatch, capsys)
    assert code == 2 and "dataset.media" in err and url in err and "content changed since the run started" in err
    assert one_error(err)
    assert snapshot(cwd / "runs" / "again") == before


def test_a_url_with_credentials_is_fetched_with_basic_auth_and_they_are_masked_everywhere(web, tmp_path):
    """`http://user:password@host/...` through the real entry point, tracked in MLflow: the server gets HTTP basic
    auth (it refuses the request without it), the answer is the one for the same image as a file, and the
    password is nowhere: not in the output, the run folder, the MLflow store, the media cache."""
    local = DIGITS / "digits-000.png"
    web.routes["/d.png"] = (200, "image/png", local.read_bytes())
    web.logins["/d.png"] = "Basic " + base64.b64encode(b"me:pa ss+w0rd").decode()
    url = web.base.replace("://", "://me:pa%20ss%2Bw0rd@") + "/d.png"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.png").write_bytes(local.read_bytes())
    dataset = write_jsonl(tmp_path / "data" / "both.jsonl", [
        {"id": "file", "messages": [{"role": "user", "content": [{"type": "image", "path": "d.png"},
                                                                 {"type": "text", "text": "What number is this?"}]}]},
        {"id": "url", "messages": url_part(url)}])
    common = ["runtime.model=vision-demo", f"dataset.path={dataset}", "runtime.device=cpu"]
    result = run_pipeline([*common, "runtime.allow_download=true", "hydra.run.dir=runs/r"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert web.asked == ["/d.png"]  # once, and let in
    lines = (tmp_path / "runs" / "r" / "transcript.jsonl").read_text().splitlines()
    rows = {row["sample_id"]: row for row in map(json.loads, lines)}
    assert rows["url"]["response"] == rows["file"]["response"]
    masked = web.base.replace("://", "://***@") + "/d.png"
    assert rows["url"]["messages"][0]["media"][0]["url"] == masked

    wrong = write_jsonl(tmp_path / "data" / "wrong.jsonl",
                        [{"id": "w", "messages": url_part(url.replace("w0rd", "x"))}])
    refused = run_pipeline([*common, f"dataset.path={wrong}", "runtime.allow_download=true", "hydra.run.dir=runs/w"],
                           cwd=tmp_path)
    assert refused.returncode == 2 and one_error(refused.stderr), refused.stderr
    assert f"wrong.jsonl:1: messages[0].content[0]: image {masked!r} could not be fetched: HTTP 401" in refused.stderr
    for secret in ("pa ss+w0rd", "pa%20ss", "w0rd", "ss%2B"):
        assert secret not in result.stdout + result.stderr + refused.stdout + refused.stderr
        for folder in (tmp_path / "runs", cached_path(url).parent):
            leaks = [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
            assert leaks == [], (secret, leaks)
