"""pipeline.core.hub_cache against real Hugging Face cache layouts built on disk, and a fake Hub on loopback.

No test reaches the network: downloads go to a local HTTP server that answers like the Hub,
to a closed loopback port, or to one that never answers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from pipeline.core import hub_cache as hub
from pipeline.core.errors import UserError
from tests.helpers.hf_cache import add_snapshot, git_blob_id, is_lfs

C1 = "1" * 8 + "a" * 32  # main and the tag v1.0
C2 = "2" * 8 + "b" * 32  # the branch dev
C3 = "1" * 8 + "c" * 32  # shares its first 8 characters with C1
ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE",
       "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_ETAG_TIMEOUT", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
       "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no user token, no user cache
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # in case the runner's env had it at import
    # huggingface_hub 2.4 fetches {ENDPOINT}/api/agent-harnesses for its user agent unless telemetry is off
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent-harnesses.json"))
    huggingface_hub.close_session()  # a fresh HTTP client, built from this environment
    yield
    huggingface_hub.close_session()


@pytest.fixture(scope="module")
def model_files(tiny_model) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tiny_model.iterdir()) if p.is_file()}


@pytest.fixture
def cache(tmp_path, model_files) -> Path:
    cache = tmp_path / "hub"
    add_snapshot(cache, "org/tiny", C1, model_files, refs=("main", "v1.0"))
    add_snapshot(cache, "org/tiny", C2, model_files, refs=("dev",))
    return cache


# --- repo references -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reference, expected", [
    ("org/name", ("org/name", None)),
    ("org/name@rev", ("org/name", "rev")),
    ("Qwen/Qwen2.5-0.5B-Instruct", ("Qwen/Qwen2.5-0.5B-Instruct", None)),
    ("meta-llama/Llama-3.2-1B-Instruct@v1.0", ("meta-llama/Llama-3.2-1B-Instruct", "v1.0")),
    ("HuggingFaceTB/SmolLM2-135M-Instruct@refs/pr/1", ("HuggingFaceTB/SmolLM2-135M-Instruct", "refs/pr/1")),
    (f"a_b/c.d@{C1}", ("a_b/c.d", C1)),
    ("o/" + "n" * 96, ("o/" + "n" * 96, None)),
])
def test_parse_repo_reference_accepts_repo_ids(reference, expected):
    assert hub.parse_repo_reference(reference) == expected


@pytest.mark.parametrize("reference", [
    "./x", "/x", "~/x", "x/", "/x/y", "a/b/c", "name", "demo", "", "org/name@", "@rev", "org/@rev", "C:/x",
    "org/-name", "org/name-", "-org/name", "org/.name", "org/name.", "org/na--me", "org/na..me", "org/name.git",
    "org/name@a..b", "org/name@-x", "org/name@a b", "org/name@x/", "org/name@x//y", "org/name@r@s", "org/na me",
    " org/name", "org/name ", "org/name\n", "ünï/code", "o/" + "n" * 97, "..\\x", "hf://org/name",
])
def test_parse_repo_reference_refuses_everything_else(reference):
    assert hub.parse_repo_reference(reference) is None


def test_parse_repo_reference_is_pure_and_does_not_import_huggingface_hub():
    code = ("import sys; from pipeline.core.hub_cache import parse_repo_reference as p; "
            "assert p('org/name@v1') == ('org/name', 'v1'); print('huggingface_hub' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# --- cache folder ----------------------------------------------------------------------------------------------

def test_hub_cache_dir_follows_the_environment_of_now(monkeypatch, tmp_path):
    assert hub.hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert hub.hub_cache_dir() == tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub.hub_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", "~/hub-cache")
    assert hub.hub_cache_dir() == tmp_path / "home" / "hub-cache"
    assert hub.hub_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert hub.hub_cache_dir(Path("~/x")) == tmp_path / "home" / "x"


def test_find_cached_reads_HF_HUB_CACHE_and_HF_HOME_at_call_time(monkeypatch, cache, tmp_path):
    assert hub.find_cached("org/tiny") is None  # the default cache (under the test's HOME) is empty
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert hub.find_cached("org/tiny").commit == C1
    monkeypatch.delenv("HF_HUB_CACHE")
    shutil.move(cache, tmp_path / "hf-home" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert hub.find_cached("org/tiny", "dev").commit == C2


# --- find_cached -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("revision, commit", [
    (None, C1), ("main", C1), ("v1.0", C1), ("dev", C2), (C1, C1), (C2, C2), ("22222222bb", C2), ("2222222", C2),
])
def test_find_cached_resolves_branches_tags_and_commits(cache, model_files, revision, commit):
    found = hub.find_cached("org/tiny", revision, cache_dir=cache)
    assert found == hub.CachedSnapshot("org/tiny", revision, commit,
                                       cache / "models--org--tiny" / "snapshots" / commit)
    assert sorted(p.name for p in found.folder.iterdir()) == sorted(model_files)
    assert json.loads((found.folder / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("repo_id, revision", [
    ("org/tiny", "v2.0"),  # no such tag
    ("org/tiny", "3" * 40),  # no such commit
    ("org/tiny", "33333"),  # no commit with that prefix
    ("org/absent", None),
    ("other/tiny", "main"),
])
def test_find_cached_returns_none_when_not_cached(cache, repo_id, revision):
    assert hub.find_cached(repo_id, revision, cache_dir=cache) is None


def test_find_cached_refuses_an_ambiguous_commit_prefix(cache, model_files):
    add_snapshot(cache, "org/tiny", C3, model_files)
    assert hub.find_cached("org/tiny", "11111111", cache_dir=cache) is None  # C1 and C3
    assert hub.find_cached("org/tiny", "11111111c", cache_dir=cache).commit == C3


def test_find_cached_of_a_missing_cache_folder_is_none(tmp_path):
    assert hub.find_cached("org/tiny", cache_dir=tmp_path / "nowhere") is None


def test_find_cached_needs_config_json(cache, model_files):
    without = {k: v for k, v in model_files.items() if k != "config.json"}
    add_snapshot(cache, "org/noconfig", C1, without, refs=("main",))
    assert hub.find_cached("org/noconfig", cache_dir=cache) is None
    # what the Hub said does not exist is cached by huggingface_hub under .no_exist/<commit>/
    no_exist = cache / "models--org--tiny" / ".no_exist" / C2 / "config.json"
    no_exist.parent.mkdir(parents=True)
    no_exist.touch()
    assert hub.find_cached("org/tiny", "dev", cache_dir=cache) is None
    assert hub.find_cached("org/tiny", cache_dir=cache).commit == C1


def test_find_cached_skips_a_snapshot_with_a_missing_shard(cache, model_files):
    weights = model_files["model.safetensors"]
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    files = {"config.json": model_files["config.json"], "model.safetensors.index.json": json.dumps(index).encode(),
             "model-00001-of-00002.safetensors": weights}
    add_snapshot(cache, "org/sharded", C1, files, refs=("main",))
    assert hub.find_cached("org/sharded", cache_dir=cache) is None
    add_snapshot(cache, "org/sharded", C1, {"model-00002-of-00002.safetensors": weights + b"\0"})
    assert hub.find_cached("org/sharded", cache_dir=cache).commit == C1


def test_find_cached_tolerates_a_hand_written_ref(cache):
    (cache / "models--org--tiny" / "refs" / "handmade").write_text(C2 + "\n")
    assert hub.find_cached("org/tiny", "handmade", cache_dir=cache).commit == C2


@pytest.mark.parametrize("repo_id, revision", [("tiny", None), ("./org/tiny", None), ("org/tiny@main", None),
                                               ("org/tiny", "../../x"), ("org/tiny", "")])
def test_find_cached_refuses_malformed_arguments(cache, repo_id, revision):
    with pytest.raises(ValueError):
        hub.find_cached(repo_id, revision, cache_dir=cache)


# --- cached_models ---------------------------------------------------------------------------------------------

def test_cached_models_lists_model_snapshots_and_skips_corrupt_entries(cache, model_files):
    add_snapshot(cache, "other/model", C3, {"config.json": b"{}"})  # no refs: detached
    add_snapshot(cache, "org/data", C1, {"data.json": b"[]"}, refs=("main",), kind="datasets")
    broken = add_snapshot(cache, "org/broken", C1, {"config.json": b"{}"}, refs=("main",))
    next((cache / "models--org--broken" / "blobs").iterdir()).unlink()  # a dangling symlink in the snapshot
    assert (broken / "config.json").is_symlink()
    (cache / "models--org--dangling-ref" / "snapshots").mkdir(parents=True)
    (cache / "models--org--dangling-ref" / "refs").mkdir()
    (cache / "models--org--dangling-ref" / "refs" / "main").write_text(C1)  # a ref to a missing snapshot
    (cache / "not-a-repo").mkdir()
    (cache / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n")
    listed = hub.cached_models(cache)
    assert [(r.repo_id, r.commit, r.refs) for r in listed] == [
        ("org/tiny", C1, ("main", "v1.0")), ("org/tiny", C2, ("dev",)), ("other/model", C3, ())]
    size = sum(len(v) for v in model_files.values())
    assert listed[0].size_on_disk == size and listed[0].folder == cache / "models--org--tiny" / "snapshots" / C1
    assert listed[2].size_on_disk == 2


def test_cached_models_survives_a_ref_that_aborts_huggingface_hubs_scan(cache):
    from huggingface_hub import scan_cache_dir

    add_snapshot(cache, "org/bad-ref", C1, {"config.json": b"{}"})
    (cache / "models--org--bad-ref" / "refs").mkdir()
    (cache / "models--org--bad-ref" / "refs" / "main").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UnicodeDecodeError):
        scan_cache_dir(cache)  # the whole scan fails for one repo
    assert [(r.repo_id, r.commit) for r in hub.cached_models(cache)] == [("org/tiny", C1), ("org/tiny", C2)]


def test_cached_models_of_an_absent_or_empty_cache_is_empty(monkeypatch, tmp_path):
    assert hub.cached_models(tmp_path / "absent") == []
    (tmp_path / "empty").mkdir()
    assert hub.cached_models(tmp_path / "empty") == []
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "absent-too"))
    assert hub.cached_models() == []


def test_cached_models_reads_the_environment(monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert {r.commit for r in hub.cached_models()} == {C1, C2}


# --- blob_sha256 -----------------------------------------------------------------------------------------------

def test_blob_sha256_is_the_sha256_of_lfs_files(cache, tiny_model):
    snapshot = cache / "models--org--tiny" / "snapshots" / C1
    expected = hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    assert hub.blob_sha256(snapshot / "model.safetensors") == expected
    assert hub.blob_sha256(Path(os.path.relpath(snapshot / "model.safetensors"))) == expected
    # small files are stored under their git blob id (40 hex), which is not a sha256 of the content
    assert hub.blob_sha256(snapshot / "config.json") is None
    assert hub.blob_sha256(tiny_model / "model.safetensors") is None  # an ordinary folder
    assert hub.blob_sha256(snapshot / "absent.safetensors") is None


def test_blob_sha256_stops_at_the_repo_blob_in_the_shared_xet_store(cache):
    """blobs/<sha256> may link on to <cache>/blobs/<xx>/<xet hash>: 64 hex too, but not the file's sha256."""
    blob = next(p for p in (cache / "models--org--tiny" / "blobs").iterdir() if len(p.name) == 64)
    sha256 = blob.name
    xet_hash = "ab" + "9" * 62
    store = cache / "blobs" / "ab" / xet_hash
    store.parent.mkdir(parents=True)
    shutil.move(blob, store)
    blob.symlink_to(os.path.relpath(store, blob.parent))
    snapshot_file = cache / "models--org--tiny" / "snapshots" / C1 / "model.safetensors"
    assert snapshot_file.resolve().name == xet_hash
    assert hub.blob_sha256(snapshot_file) == sha256
    assert hashlib.sha256(snapshot_file.read_bytes()).hexdigest() == sha256


def test_blob_sha256_of_a_copied_file_comes_from_the_tree_listing(tmp_path, model_files):
    """Where symlinks are not supported huggingface_hub copies files into the snapshot; no blob name to read."""
    cache = tmp_path / "hub"
    snapshot = add_snapshot(cache, "org/copied", C1, model_files, refs=("main",), link=False)
    weights = snapshot / "model.safetensors"
    assert hub.blob_sha256(weights) is None  # no tree listing: the caller hashes the file
    sha256 = hashlib.sha256(model_files["model.safetensors"]).hexdigest()
    size = len(model_files["model.safetensors"])
    listing = {"format_version": 1, "files": {"model.safetensors": {
        "size": size, "blob_id": "0" * 40, "lfs_sha256": sha256, "lfs_size": size}}}
    (cache / "models--org--copied" / "trees").mkdir()
    (cache / "models--org--copied" / "trees" / f"{C1}.json").write_text(json.dumps(listing))
    assert hub.blob_sha256(weights) == sha256
    weights.write_bytes(model_files["model.safetensors"] + b"changed")  # the size no longer agrees
    assert hub.blob_sha256(weights) is None


# --- not_cached_message ----------------------------------------------------------------------------------------

def test_the_cli_named_in_messages_is_the_one_huggingface_hub_installs():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get(hub.CLI, "").startswith("huggingface_hub.")
    assert "huggingface-cli" not in scripts


def test_not_cached_message_names_repo_cache_and_both_fixes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    line = hub.not_cached_message("org/tiny", "v2", None)
    assert "\n" not in line
    assert "org/tiny@v2" in line and str(tmp_path / "hub") in line
    assert "`hf download org/tiny --revision v2`" in line and "runtime.allow_download=true" in line
    assert "--cache-dir" not in line  # the default cache: hf download puts it there by itself
    line = hub.not_cached_message("org/tiny", None, tmp_path / "other cache")
    assert "--revision" not in line
    assert f"--cache-dir '{tmp_path / 'other cache'}'" in line
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in hub.not_cached_message("org/tiny", None, None)


# --- download: failures ----------------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def download_error(*args, **kwargs) -> tuple[str, float]:
    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        hub.download(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message, time.monotonic() - started


@pytest.mark.timeout(20)  # a hang is the failure this guards against
def test_download_offline_refuses_before_any_request(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    message, seconds = download_error("org/tiny", cache_dir=tmp_path / "hub")
    assert "HF_HUB_OFFLINE=1" in message and "unset HF_HUB_OFFLINE" in message and "org/tiny" in message
    assert seconds < 1
    assert not (tmp_path / "hub").exists()


@pytest.mark.timeout(20)  # a hang is the failure this guards against
def test_download_when_huggingface_hub_was_imported_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1 at import, unset since
    message, seconds = download_error("org/tiny", "v1", cache_dir=tmp_path / "hub")
    assert "offline mode" in message and "org/tiny@v1" in message and seconds < 5


@pytest.mark.timeout(20)  # a hang is the failure this guards against
def test_download_without_a_connection_names_the_endpoint(monkeypatch, tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    message, seconds = download_error("org/tiny", cache_dir=tmp_path / "hub", timeout_s=2)
    assert f"no connection to {endpoint}" in message and "ConnectError" in message
    assert "hf download org/tiny" in message and seconds < 5


@pytest.mark.timeout(20)  # a hang is the failure this guards against
def test_download_from_an_endpoint_that_never_answers_gives_up_after_the_timeout(monkeypatch, tmp_path):
    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        message, seconds = download_error("org/tiny", cache_dir=tmp_path / "hub", timeout_s=0.5)
    assert f"no answer from {endpoint} within 0.5 s" in message and "Timeout" in message
    assert seconds < 3


def test_download_failures_in_a_fresh_process_with_the_environment_set_before_import(tmp_path):
    """The real situation: huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT when it is imported."""
    code = ("import sys; from pipeline.core.hub_cache import download\n"
            "from pipeline.core.errors import UserError\n"
            "try:\n    download('org/tiny', cache_dir=sys.argv[1], timeout_s=2)\n"
            "except UserError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    env.update(HOME=str(tmp_path), HF_HUB_DISABLE_TELEMETRY="1")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    outputs = {}
    for case, extra in {"offline": {"HF_HUB_OFFLINE": "1"}, "dead": {"HF_ENDPOINT": endpoint}}.items():
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hub")], env={**env, **extra},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs[case] = done.stdout.strip()
    assert outputs["offline"].startswith("cannot download org/tiny: HF_HUB_OFFLINE=1 is set")
    assert outputs["dead"].startswith(f"cannot download org/tiny: no connection to {endpoint}")
    assert all(len(out.splitlines()) == 1 for out in outputs.values())


# --- download: a fake Hub on loopback --------------------------------------------------------------------------

class FakeHub:
    """Answers the requests huggingface_hub makes for snapshot_download, like the Hub does."""

    def __init__(self, repos: dict[str, dict]) -> None:
        self.repos = repos  # repo_id -> {"commit", "files", "branches", "gated"}
        self.requests: list[str] = []
        hub_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hub_self.answer(self, body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                hub_self.answer(self, body=False)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = urlsplit(request.path).path
        self.requests.append(f"{request.command} {path}")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"]:
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
        else:
            repo_id, rest = "/".join(parts[0:2]), parts[2:]
        repo = self.repos.get(repo_id)
        if repo is None:
            return self.send(request, 404, {"X-Error-Code": "RepoNotFound"}, b'{"error":"Repository not found"}')
        if repo.get("gated"):
            return self.send(request, 403, {"X-Error-Code": "GatedRepo"}, b'{"error":"gated"}')
        if parts[0] == "api":
            revision = rest[1] if rest[:1] in (["revision"], ["tree"]) else "main"
            commit = repo["branches"].get(revision, revision if revision == repo["commit"] else None)
            if commit is None:
                return self.send(request, 404, {"X-Error-Code": "RevisionNotFound"}, b'{"error":"Invalid rev id"}')
            if rest[:1] == ["tree"]:
                listing = [{"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data),
                            **({"lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                        "pointerSize": 134}} if is_lfs(name) else {})}
                           for name, data in repo["files"].items()]
                return self.send(request, 200, {"Content-Type": "application/json"}, json.dumps(listing).encode())
            info = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": n} for n in repo["files"]]}
            return self.send(request, 200, {"Content-Type": "application/json"}, json.dumps(info).encode())
        if rest[:1] == ["resolve"]:
            name = "/".join(rest[2:])
            data = repo["files"].get(name)
            if data is None:
                return self.send(request, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo["commit"]}, b"")
            headers = {"X-Repo-Commit": repo["commit"], "ETag": f'"{git_blob_id(data)}"'}
            if is_lfs(name):
                headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
                headers["X-Linked-Size"] = str(len(data))
            return self.send(request, 200, headers, data if body else b"", length=len(data))
        return self.send(request, 404, {}, b"")

    @staticmethod
    def send(request: BaseHTTPRequestHandler, status: int, headers: dict, payload: bytes,
             length: int | None = None) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(payload) if length is None else length))
        request.end_headers()
        if payload:
            request.wfile.write(payload)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch, model_files):
    extras = {"pytorch_model.bin": b"pickle", "onnx/model.onnx": b"onnx", "sub/model.safetensors": b"nested",
              "flax_model.msgpack": b"flax", "README.md": b"# tiny", "pytorch_model.bin.index.json": b"{}"}
    server = FakeHub({
        "org/tiny": {"commit": C1, "files": {**model_files, **extras}, "branches": {"main": C1, "v1.0": C1}},
        "org/pickles": {"commit": C2, "files": {"config.json": b"{}", "pytorch_model.bin": b"pickle"},
                        "branches": {"main": C2}},
        "org/gated": {"commit": C1, "files": {}, "branches": {"main": C1}, "gated": True},
    })
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    yield server
    server.close()


def test_download_fetches_what_a_model_needs_and_nothing_else(fake_hub, tmp_path, model_files):
    cache = tmp_path / "hub"
    assert hub.find_cached("org/tiny", "v1.0", cache_dir=cache) is None
    snapshot = hub.download("org/tiny", "v1.0", cache_dir=cache)
    assert (snapshot.repo_id, snapshot.revision, snapshot.commit) == ("org/tiny", "v1.0", C1)
    assert sorted(p.name for p in snapshot.folder.iterdir()) == sorted(model_files)  # no .bin, onnx, msgpack, ...
    for name, data in model_files.items():
        assert (snapshot.folder / name).read_bytes() == data
    assert not any(r.startswith(("HEAD /org/tiny/resolve/", "GET /org/tiny/resolve/")) and
                   r.endswith(("bin", "onnx", "msgpack", "README.md", "sub/model.safetensors", "bin.index.json"))
                   for r in fake_hub.requests)
    # the layout is huggingface_hub's own: the ref is written, and find_cached and blob_sha256 read it
    assert (cache / "models--org--tiny" / "refs" / "v1.0").read_text() == C1
    assert not (cache / "models--org--tiny" / "refs" / "main").exists()
    assert hub.find_cached("org/tiny", "v1.0", cache_dir=cache) == snapshot
    assert hub.blob_sha256(snapshot.folder / "model.safetensors") == \
        hashlib.sha256(model_files["model.safetensors"]).hexdigest()
    assert [(r.repo_id, r.refs) for r in hub.cached_models(cache)] == [("org/tiny", ("v1.0",))]


def test_download_of_main_writes_the_main_ref(fake_hub, tmp_path):
    snapshot = hub.download("org/tiny", cache_dir=tmp_path / "hub")
    assert snapshot.revision is None and snapshot.commit == C1
    assert hub.find_cached("org/tiny", cache_dir=tmp_path / "hub") == snapshot


@pytest.mark.parametrize("repo_id, revision, expected", [
    ("org/absent", None, "no such repo on {endpoint} (or it is private)"),
    ("org/gated", None, "the repo is gated; accept its terms at {endpoint}/org/gated"),
    ("org/tiny", "v9", "the repo has no revision 'v9'"),
    ("org/pickles", None, "has only pickle weights (pytorch_model.bin)"),
])
def test_download_explains_what_the_hub_refused(fake_hub, tmp_path, repo_id, revision, expected):
    message, seconds = download_error(repo_id, revision, cache_dir=tmp_path / "hub")
    assert expected.format(endpoint=fake_hub.endpoint) in message and seconds < 5
    assert not list((tmp_path / "hub").glob("*/snapshots/*/*"))  # nothing was fetched


def test_download_of_pickle_weights_when_allowed(fake_hub, tmp_path):
    snapshot = hub.download("org/pickles", cache_dir=tmp_path / "hub", pickle_weights=True)
    assert sorted(p.name for p in snapshot.folder.iterdir()) == ["config.json", "pytorch_model.bin"]


def test_download_on_a_full_disk(fake_hub, monkeypatch, tmp_path):
    import huggingface_hub

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", full)
    message, _ = download_error("org/tiny", cache_dir=tmp_path / "hub")
    assert f"the disk holding {tmp_path / 'hub'} is full" in message and "HF_HUB_CACHE" in message


def test_download_refuses_malformed_arguments(tmp_path):
    with pytest.raises(ValueError):
        hub.download("./org/tiny", cache_dir=tmp_path)
    with pytest.raises(ValueError):
        hub.download("org/tiny", timeout_s=0, cache_dir=tmp_path)
