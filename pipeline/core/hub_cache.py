"""Hugging Face repo ids: find them in the local Hugging Face cache, and download them only when asked.

The cache is the one huggingface_hub uses (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
`~/.cache/huggingface/hub`), read from the environment at call time: huggingface_hub reads those
variables once, when it is imported, so this module always passes the folder explicitly. Every
function also takes `cache_dir`, which wins over the environment.

Lookups read files only and never touch the network. `download` is the one function that does,
with short timeouts, and turns every failure (offline, no connection, repo not found, gated,
revision not found, disk full) into a one-line `UserError`.

This module does not decide whether a reference is a repo id or a local folder, nor inspect
the model's files: the resolve stage does. huggingface_hub is imported inside the functions
that need it, so importing this module stays cheap (`parse_repo_reference` is pure).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from pipeline.core.errors import UserError, one_line

_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"  # 1-96 chars, no leading/trailing '-' or '.'
_REVISION = r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.+-]*(?:/[A-Za-z0-9_.+-]+)*"  # branch, tag (may hold '/'), commit
# owner/name[@revision]; '--' and '..' are refused in the id as on the Hub, and so is a name ending in .git.
REPO_ID_PATTERN = re.compile(
    rf"(?P<repo_id>(?![^@]*(?:--|\.\.))(?P<owner>{_PART})/(?P<name>{_PART})(?<!\.git))(?:@(?P<revision>{_REVISION}))?"
)
FULL_COMMIT = re.compile(r"[0-9a-f]{40}")
SHORT_COMMIT = re.compile(r"[0-9a-fA-F]{5,39}")  # huggingface_hub's REGEX_COMMIT_OID starts at 5 characters
SHA256 = re.compile(r"[0-9a-f]{64}")
REPO_FOLDER = re.compile(r"(?:models|datasets|spaces|kernels)--.+")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # huggingface_hub honours both
DEFAULT_ENDPOINT = "https://huggingface.co"
CLI = "hf"  # the command huggingface_hub >= 1.0 installs (huggingface-cli is gone)

# What a transformers model folder needs, top level only (transformers reads no subfolder of a model folder).
DOWNLOAD_PATTERNS = ("*.json", "*.jinja", "*.safetensors", "*.model", "*.tiktoken", "*.txt")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")  # only with pickle_weights=True, and only when there is no safetensors
REMOTE_CODE_PATTERNS = ("*.py",)  # only with remote_code=True
IGNORE_PATTERNS = ("*/*", "*.bin*", "*.pt", "*.pth", "*.ckpt", "*.h5*", "*.msgpack*", "*.onnx*", "*.gguf")


@dataclass(frozen=True)
class CachedSnapshot:
    """One revision of a repo, present in the cache with its config.json."""

    repo_id: str
    revision: Optional[str]  # as asked (branch, tag or commit); None for the default branch
    commit: str  # the snapshot's commit hash
    folder: Path  # <cache>/models--owner--name/snapshots/<commit>


@dataclass(frozen=True)
class CachedRepo:
    """One model snapshot found by scanning the cache."""

    repo_id: str
    commit: str
    refs: tuple[str, ...]  # branch/tag names pointing at this commit
    folder: Path
    size_on_disk: int


def parse_repo_reference(reference: str) -> Optional[tuple[str, Optional[str]]]:
    """'org/name' -> ('org/name', None); 'org/name@rev' -> ('org/name', 'rev'); anything else -> None.

    Paths ('./x', '/x', '~/x', 'a/b/c') and bare names ('gpt2') are not repo ids here. A relative
    folder spelt 'org/name' has the same shape: the caller checks for a local folder first."""
    match = REPO_ID_PATTERN.fullmatch(reference) if isinstance(reference, str) else None
    return (match["repo_id"], match["revision"]) if match else None


def hub_cache_dir(cache_dir: Optional[Path] = None) -> Path:
    """The cache folder in effect, as huggingface_hub computes it but from the environment of now."""
    if cache_dir is not None:
        return Path(os.path.expandvars(os.path.expanduser(str(cache_dir))))
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # the second is the legacy name
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[variable])))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def hub_endpoint() -> str:
    """The Hub URL downloads go to: HF_ENDPOINT of now, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def repo_folder(repo_id: str, cache_dir: Optional[Path] = None) -> Path:
    """<cache>/models--owner--name, where huggingface_hub keeps a model repo."""
    return hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def find_cached(repo_id: str, revision: Optional[str] = None,
                cache_dir: Optional[Path] = None) -> Optional[CachedSnapshot]:
    """The cached snapshot holding config.json for that revision, or None.

    A branch or tag goes through refs/, a full commit hash names the snapshot directly, and a
    short commit prefix (5+ hex) is used when exactly one cached snapshot starts with it. A
    snapshot whose model.safetensors.index.json lists a shard that is missing (an interrupted
    download) counts as not cached. Raises ValueError for a repo id or revision of the wrong shape."""
    _check_repo_id(repo_id)
    if revision is not None:
        _check_revision(revision)
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir(cache_dir)
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache), revision=revision)
    if isinstance(found, str):
        folder = Path(found).parent
    else:
        if found is not None:  # _CACHED_NO_EXIST: the Hub said this revision has no config.json
            return None
        commit = _commit_without_hub_helper(repo_folder(repo_id, cache), revision or "main")
        if commit is None:
            return None
        folder = repo_folder(repo_id, cache) / "snapshots" / commit
        if not (folder / "config.json").is_file():
            return None
    if not _shards_present(folder):
        return None
    return CachedSnapshot(repo_id=repo_id, revision=revision, commit=folder.name, folder=folder)


def _commit_without_hub_helper(repo: Path, revision: str) -> Optional[str]:
    """What try_to_load_from_cache does not do: a ref file with stray whitespace, a short commit prefix."""
    ref = repo / "refs" / revision
    if ref.is_file():
        try:
            commit = ref.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError):
            return None
        return commit if FULL_COMMIT.fullmatch(commit) else None
    if not SHORT_COMMIT.fullmatch(revision):
        return None
    try:
        matches = [p.name for p in (repo / "snapshots").iterdir() if p.name.startswith(revision.lower())]
    except OSError:
        return None
    return matches[0] if len(matches) == 1 and FULL_COMMIT.fullmatch(matches[0]) else None


def _shards_present(folder: Path) -> bool:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return True
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
    except (OSError, UnicodeError, ValueError, AttributeError):
        return True  # unreadable index: the resolve stage says so with the file's name
    return all(isinstance(name, str) and (folder / name).is_file() for name in set(weight_map.values()))


def not_cached_message(repo_id: str, revision: Optional[str], cache_dir: Optional[Path]) -> str:
    """The one line shown when a repo id is not cached and downloads are off."""
    cache = hub_cache_dir(cache_dir)
    command = [CLI, "download", repo_id]
    if revision:
        command += ["--revision", revision]
    if cache != hub_cache_dir():
        command += ["--cache-dir", str(cache)]
    offline = _offline_variable()
    hint = f" ({offline} is set: unset it for either)" if offline else ""
    return (f"{_label(repo_id, revision)} is not in the Hugging Face cache ({cache}) and downloads are off: "
            f"run `{shlex.join(command)}` or set runtime.allow_download=true{hint}")


def cached_models(cache_dir: Optional[Path] = None) -> list[CachedRepo]:
    """Every model snapshot in the cache, sorted by repo id then commit.

    An absent cache folder gives []. A repo that huggingface_hub's scan finds corrupt (a broken
    symlink, a ref to a missing snapshot, an unreadable ref) is skipped, not fatal."""
    cache = hub_cache_dir(cache_dir)
    if not cache.is_dir():
        return []
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos: Iterable = scan_cache_dir(cache).repos  # CorruptedCacheException per repo is collected, not raised
    except CacheNotFound:
        return []
    except (OSError, UnicodeError, ValueError):  # raised by one bad repo, which aborts the whole scan
        repos = _scan_repo_by_repo(cache)
    found = [
        CachedRepo(repo_id=repo.repo_id, commit=revision.commit_hash, refs=tuple(sorted(revision.refs)),
                   folder=Path(revision.snapshot_path), size_on_disk=revision.size_on_disk)
        for repo in repos if repo.repo_type == "model"
        for revision in repo.revisions
    ]
    return sorted(found, key=lambda r: (r.repo_id, r.commit))


def _scan_repo_by_repo(cache: Path) -> list:
    try:
        from huggingface_hub.utils._cache_manager import _scan_cached_repo  # private: only for this fallback
    except ImportError:
        return []
    repos = []
    for path in sorted(cache.glob("models--*")):
        try:
            repos.append(_scan_cached_repo(path))
        except Exception:  # noqa: BLE001 - a corrupt entry is skipped, whatever the corruption
            continue
    return repos


def blob_sha256(path: Path) -> Optional[str]:
    """The sha256 of a file in a cache snapshot when the cache already names it, else None.

    huggingface_hub stores each file under blobs/<etag>: for LFS files (safetensors and any large
    file) the etag is the file's sha256, for small git files a 40-hex git blob id. Only the first
    symlink hop counts: with the shared Xet store, blobs/<sha256> is itself a link to
    blobs/<xx>/<xet hash>, a 64-hex name that is not a sha256. For a copy in place of a link
    (no symlink support), the sha256 comes from the tree listing snapshot_download keeps in
    trees/<commit>.json, when the size agrees. The name is the Hub's word: huggingface_hub
    checks a download's size, not its hash."""
    path = Path(os.path.abspath(path))
    try:
        if path.is_symlink():
            target = Path(os.readlink(path))
            blob = Path(os.path.normpath(path.parent / target))
            if (blob.parent.name == "blobs" and REPO_FOLDER.fullmatch(blob.parent.parent.name)
                    and SHA256.fullmatch(blob.name) and blob.is_file()):
                return blob.name
            return None
        if path.is_file():
            return _sha256_from_tree_listing(path)
    except OSError:
        return None
    return None


def _sha256_from_tree_listing(path: Path) -> Optional[str]:
    parents = path.parents
    for level in range(1, len(parents) - 1):
        if parents[level].name == "snapshots" and REPO_FOLDER.fullmatch(parents[level].parent.name):
            snapshot, repo = parents[level - 1], parents[level].parent
            break
    else:
        return None
    try:
        listing = json.loads((repo / "trees" / f"{snapshot.name}.json").read_text(encoding="utf-8"))
        entry = listing["files"][path.relative_to(snapshot).as_posix()]
        sha, size = entry.get("lfs_sha256"), entry.get("lfs_size")
    except (OSError, UnicodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if listing.get("format_version") != 1 or not isinstance(sha, str) or not SHA256.fullmatch(sha):
        return None
    return sha if size == path.stat().st_size else None


def download(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[Path] = None,
             timeout_s: float = 10.0, *, pickle_weights: bool = False, remote_code: bool = False) -> CachedSnapshot:
    """Download what a transformers model needs into the cache, and return the snapshot.

    Fetched: top-level *.json (config, tokenizer, generation, safetensors index), *.jinja,
    *.safetensors, sentencepiece/tiktoken models and *.txt (merges, vocab). Never *.bin, *.pt,
    *.h5, *.msgpack, ONNX or GGUF, unless `pickle_weights` and the repo has no safetensors at all;
    *.py only with `remote_code`. The Hub is asked for the commit first (one request, bounded by
    `timeout_s`), so being offline, unreachable, a missing or gated repo or a missing revision
    fail there, before any file. Per-file metadata requests use the same timeout and file reads
    huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT (10 s without data); the file listing has no timeout
    in huggingface_hub 2.4, so a Hub that answered the first request and then stalls is the one
    case not bounded here. The ref (refs/<branch or tag>) is written only once every file is in,
    so an interrupted download never looks cached under its branch name.
    Every failure is a UserError with one line: what happened and how to fix it."""
    _check_repo_id(repo_id)
    if revision is not None:
        _check_revision(revision)
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    cache, endpoint, label = hub_cache_dir(cache_dir), hub_endpoint(), _label(repo_id, revision)
    offline = _offline_variable()
    if offline:
        raise UserError(f"cannot download {label}: {offline}={os.environ[offline]} is set, so nothing may be fetched "
                        f"from {endpoint}; unset {offline}, or download it where there is network "
                        f"(`{CLI} download {repo_id}`) and copy the cache folder {cache}")
    try:
        return _download(repo_id, revision, cache, endpoint, timeout_s, pickle_weights, remote_code)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes one readable line
        raise UserError(_describe_download_error(error, repo_id, revision, cache, endpoint, timeout_s)) from None


def _download(repo_id: str, revision: Optional[str], cache: Path, endpoint: str, timeout_s: float,
              pickle_weights: bool, remote_code: bool) -> CachedSnapshot:
    from huggingface_hub import HfApi, snapshot_download

    label = _label(repo_id, revision)
    info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, timeout=timeout_s)
    commit = info.sha
    if not isinstance(commit, str) or not FULL_COMMIT.fullmatch(commit):
        raise UserError(f"cannot download {label}: {endpoint} answered without a commit hash; "
                        "check that HF_ENDPOINT points at a Hugging Face Hub")
    names = None if info.siblings is None else [s.rfilename for s in info.siblings]
    allow, ignore = _patterns(names, label, pickle_weights, remote_code)
    cache.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id, revision=commit, cache_dir=str(cache), endpoint=endpoint, etag_timeout=timeout_s,
                      allow_patterns=allow, ignore_patterns=ignore)
    if revision is None or revision != commit:
        _write_ref(repo_folder(repo_id, cache), revision or "main", commit)
    snapshot = find_cached(repo_id, commit, cache)
    if snapshot is None:
        raise UserError(f"downloaded {label} into {cache}, but the snapshot {commit} lacks config.json or a weight "
                        f"shard; run `{CLI} download {repo_id}` to complete it")
    return CachedSnapshot(repo_id=repo_id, revision=revision, commit=commit, folder=snapshot.folder)


def _patterns(names: Optional[list[str]], label: str, pickle_weights: bool,
              remote_code: bool) -> tuple[list[str], list[str]]:
    """allow_patterns and ignore_patterns for snapshot_download, from the repo's file list when the Hub gave it."""
    allow = list(DOWNLOAD_PATTERNS) + (list(REMOTE_CODE_PATTERNS) if remote_code else [])
    with_pickles = pickle_weights and names is None  # unknown files: let the patterns decide
    if names is not None:
        top = [n for n in names if "/" not in n]
        if "config.json" not in top:
            raise UserError(f"{label} has no config.json, so it is not a transformers model")
        if not any(n.endswith(".safetensors") for n in top):
            pickles = sorted(n for n in top if n.endswith((".bin", ".pt", ".pth")))
            if not pickles:
                raise UserError(f"{label} has no *.safetensors weights at the top of the repo; nothing to load")
            if not pickle_weights:
                raise UserError(f"{label} has only pickle weights ({', '.join(pickles[:3])}), which can run code "
                                "when loaded; set runtime.allow_pickle=true only if you trust it")
            with_pickles = True
    if not with_pickles:
        return allow, list(IGNORE_PATTERNS)
    return allow + list(PICKLE_PATTERNS), [p for p in IGNORE_PATTERNS if p not in ("*.bin*", "*.pt", "*.pth")]


def _write_ref(repo: Path, revision: str, commit: str) -> None:
    """refs/<revision> -> commit, written atomically as huggingface_hub does; best effort (read-only cache)."""
    ref = repo / "refs" / revision
    try:
        if ref.is_file() and ref.read_text(encoding="utf-8") == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        temporary = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        temporary.write_text(commit, encoding="utf-8")
        os.replace(temporary, ref)
    except (OSError, UnicodeError):
        pass


def _describe_download_error(error: BaseException, repo_id: str, revision: Optional[str], cache: Path,
                            endpoint: str, timeout_s: float) -> str:
    """One line for an exception raised while downloading: what happened, then how to fix it."""
    import httpx2
    from huggingface_hub import errors as hub

    label = _label(repo_id, revision)
    chain = _chain(error)

    def first(kind) -> Optional[BaseException]:
        return next((e for e in chain if isinstance(e, kind)), None)

    elsewhere = f"or download it where there is network (`{CLI} download {repo_id}`) and copy the cache folder {cache}"
    if first(hub.OfflineModeIsEnabled):
        return (f"cannot download {label}: huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was "
                f"imported); unset HF_HUB_OFFLINE and start again, {elsewhere}")
    if first(hub.GatedRepoError):
        return (f"cannot download {label}: the repo is gated; accept its terms at {endpoint}/{repo_id} and log in "
                f"with `{CLI} auth login` (or set HF_TOKEN)")
    if first(hub.RepositoryNotFoundError):
        return (f"cannot download {label}: no such repo on {endpoint} (or it is private); check the spelling, or "
                f"log in with `{CLI} auth login` (or set HF_TOKEN) if it is private")
    if first(hub.RevisionNotFoundError):
        return (f"cannot download {label}: the repo has no revision {revision or 'main'!r}; "
                f"check the branch, tag or commit on {endpoint}/{repo_id}")
    if first(hub.DisabledRepoError):
        return f"cannot download {label}: the repo is disabled on {endpoint}"
    if first(hub.FileMetadataError):
        return (f"cannot download {label}: {endpoint} does not answer like a Hugging Face Hub; check HF_ENDPOINT, "
                "the proxy and the SSL certificates")
    disk = next((e for e in chain if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)), None)
    if disk is not None or any("No space left on device" in str(e) for e in chain):
        return (f"cannot download {label}: the disk holding {cache} is full; free some space or point HF_HUB_CACHE "
                "at a larger disk")
    denied = next((e for e in chain if isinstance(e, OSError) and not isinstance(e, hub.HfHubHTTPError)
                   and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)), None)
    if denied is not None:
        where = getattr(denied, "filename", None) or cache
        return (f"cannot download {label}: cannot write to {where} ({denied.strerror}); fix its permissions or "
                "point HF_HUB_CACHE at a folder you can write")
    if first(httpx2.ProxyError):
        return f"cannot download {label}: the proxy refused the connection to {endpoint}; check HTTPS_PROXY/HTTP_PROXY"
    timeout = first(httpx2.TimeoutException)
    if timeout is not None:
        return (f"cannot download {label}: no answer from {endpoint} within {timeout_s:g} s "
                f"({type(timeout).__name__}); check the network, the proxy or HF_ENDPOINT, {elsewhere}")
    connection = first((httpx2.TransportError, ConnectionError))
    if connection is not None:
        return (f"cannot download {label}: no connection to {endpoint} ({type(connection).__name__}: "
                f"{one_line(connection, 200) or 'no detail'}); check the network, the proxy or HF_ENDPOINT, {elsewhere}")
    http = first(hub.HfHubHTTPError)
    if http is not None:
        status = getattr(getattr(http, "response", None), "status_code", "?")
        detail = getattr(http, "server_message", None) or one_line(http, 200)
        advice = {401: f"log in with `{CLI} auth login` (or set HF_TOKEN)",
                  403: "check that your token may read this repo",
                  429: "too many requests: wait a minute and try again"}.get(status, "try again later")
        return f"cannot download {label}: {endpoint} answered HTTP {status} ({one_line(detail, 200)}); {advice}"
    return f"cannot download {label}: {type(error).__name__}: {one_line(error, 200) or 'no detail'}"


def _offline_variable() -> Optional[str]:
    """The variable that puts huggingface_hub offline now, if any (read at call time, like the cache folder)."""
    for variable in OFFLINE_VARIABLES:
        if os.environ.get(variable, "").upper() in ("1", "ON", "YES", "TRUE"):
            return variable
    return None


def _check_repo_id(repo_id: str) -> None:
    parsed = parse_repo_reference(repo_id) if isinstance(repo_id, str) else None
    if parsed is None or parsed[1] is not None:
        raise ValueError(f"not a Hugging Face repo id (owner/name): {repo_id!r}")


def _check_revision(revision: str) -> None:
    if not isinstance(revision, str) or not re.fullmatch(_REVISION, revision):
        raise ValueError(f"not a revision (branch, tag or commit): {revision!r}")


def _label(repo_id: str, revision: Optional[str]) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: Optional[BaseException] = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


