"""The response cache (pipeline.backends.cache): what its key holds, what it serves, and its store under stress.

Every field that decides an answer is changed on its own and must miss; what does not decide it (the
request's log label, the model's folder) must hit. The store is written by two processes at once, a
writer is killed in the middle of a value file and of a commit, and the folder is held to its size.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from pipeline.backends.base import ChoicesRequest, ChoicesResult, Completion, Continuation, Request
from pipeline.backends.cache import CachingBackend, with_cache
from pipeline.backends.cache_store import ResponseStore
from pipeline.backends.fake import FakeBackend, Reply
from pipeline.core.config import CacheConfig, GenerationConfig, SessionConfig
from pipeline.core.records import MediaPart, Message, ToolCall
from tests.conftest import DEMO_DATASET, DEMO_MODEL, make_config, model_copy

SETTINGS = {"temperature": 0.0, "top_p": None, "top_k": None, "max_new_tokens": 8, "seed": 0, "num_samples": 1,
            "do_sample": False, "stop": [], "thinking": "auto"}


def cached(tmp_path: Path, inner=None, **settings) -> CachingBackend:
    backend = inner or FakeBackend()
    backend.generation = {**SETTINGS, **settings}
    wrapped = with_cache(backend, CacheConfig(enabled=True, dir=str(tmp_path / "cache")))
    assert isinstance(wrapped, CachingBackend)
    return wrapped


def request(**changes) -> Request:
    base = Request(messages=[Message("system", "be brief"), Message("user", "What is 2+3?")], max_new_tokens=8,
                   key="add-000/0")
    return replace(base, **changes)


# one change per field of Request: each must change the key (sampled, so that the seed is in play)
SAMPLED = dict(temperature=0.7, seed=11)
REQUEST_CHANGES = {
    "messages": dict(messages=[Message("user", "What is 2+4?")]),
    "max_new_tokens": dict(max_new_tokens=9),
    "temperature": dict(temperature=0.8),
    "top_p": dict(top_p=0.9),
    "top_k": dict(top_k=5),
    "stop": dict(stop=["\n"]),
    "seed": dict(seed=12),
    "tools": dict(tools=[{"type": "function", "function": {"name": "add", "parameters": {}}}]),
    "min_p": dict(min_p=0.1),
    "repetition_penalty": dict(repetition_penalty=1.1),
    "sample_index": dict(sample_index=1),
}


def test_every_field_of_a_request_but_its_label_is_tested_below():
    assert {f.name for f in fields(Request)} - {"key"} == set(REQUEST_CHANGES)


@pytest.mark.parametrize("field", sorted(REQUEST_CHANGES))
def test_a_changed_request_field_misses(tmp_path, field):
    backend = cached(tmp_path)
    before = backend.request_key(request(**SAMPLED))
    after = backend.request_key(request(**{**SAMPLED, **REQUEST_CHANGES[field]}))
    assert before is not None and after is not None and before != after


@pytest.mark.parametrize("change", [
    dict(messages=[Message("system", "be brief"), Message("user", "What is 2+3?", media=(
        MediaPart("image", "a.png", sha256="1" * 64),))]),
    dict(messages=[Message("system", "be brief"), Message("user", "What is 2+3?"),
                   Message("assistant", "", tool_calls=(ToolCall("add", {"a": 2, "b": 3}),)),
                   Message("tool", "5", name="add")]),
    dict(messages=[Message("system", "be brief"), Message("user", "What is 2+3?"), Message("tool", "5", name="sub")]),
], ids=["media part", "tool call", "tool name"])
def test_media_digests_and_tool_steps_are_in_the_key(tmp_path, change):
    backend = cached(tmp_path)
    assert backend.request_key(request(**change)) != backend.request_key(request())


def test_a_media_part_is_keyed_by_its_content_not_its_path(tmp_path):
    backend = cached(tmp_path)

    def with_image(source: str, sha: str) -> Request:
        return request(messages=[Message("user", "which digit?", media=(MediaPart("image", source, sha256=sha),))])

    assert backend.request_key(with_image("a.png", "1" * 64)) == backend.request_key(with_image("b.png", "1" * 64))
    assert backend.request_key(with_image("a.png", "1" * 64)) != backend.request_key(with_image("a.png", "2" * 64))
    assert backend.request_key(with_image("a.png", None)) is None  # not read by the plan: never cached


@pytest.mark.parametrize("setting, value", [("top_p", 0.5), ("thinking", "off"), ("do_sample", True),
                                            ("repetition_penalty", 1.3), ("stop", ["."])])
def test_a_changed_run_setting_misses(tmp_path, setting, value):
    assert cached(tmp_path, **{setting: value}).request_key(request()) != cached(tmp_path).request_key(request())


@pytest.mark.parametrize("setting", ["seed", "num_samples"])
def test_settings_each_request_carries_itself_do_not_split_the_cache(tmp_path, setting):
    """A greedy answer does not depend on generation.seed; num_samples decides how many, not what."""
    assert cached(tmp_path, **{setting: 7}).request_key(request()) == cached(tmp_path).request_key(request())


def test_the_request_label_and_another_model_name(tmp_path):
    backend = cached(tmp_path)
    assert backend.request_key(request(key="other/3")) == backend.request_key(request())
    assert cached(tmp_path, FakeBackend(model="other")).request_key(request()) != backend.request_key(request())


def test_unseeded_sampling_and_an_unknown_model_are_not_cached(tmp_path):
    assert cached(tmp_path).request_key(request(temperature=0.7)) is None
    batch_seeded = FakeBackend()
    batch_seeded.capabilities = replace(batch_seeded.capabilities, per_request_seed=False)
    assert cached(tmp_path, batch_seeded).request_key(request(**SAMPLED)) is None  # its seed depends on the batch
    anonymous = FakeBackend()
    anonymous.cache_identity = lambda: None  # type: ignore[method-assign]
    assert cached(tmp_path, anonymous).request_key(request()) is None


class Sink:
    def __init__(self) -> None:
        self.completed: dict[int, str] = {}

    def on_text(self, row: int, text: str) -> None:
        pass

    def on_complete(self, row: int, text: str) -> None:
        self.completed[row] = text


def test_a_hit_is_the_stored_answer_marked_cached_and_the_backend_is_asked_only_for_the_rest(tmp_path):
    first = cached(tmp_path, FakeBackend(lambda r: Reply("five", [ToolCall("add", {"a": 2})])))
    first.load()
    (stored,) = first.generate([request(tools=[{"name": "add"}])])
    inner = FakeBackend(lambda r: "fresh")
    again = cached(tmp_path, inner)
    again.load()
    sink = Sink()
    requests = [request(tools=[{"name": "add"}]), request(messages=[Message("user", "new")])]
    assert again.count_tokens(requests)[0] == stored.prompt_tokens
    hit_and_miss = again.generate(requests, sink)
    assert [c.text for c in hit_and_miss] == ["five", "fresh"] and [c.cached for c in hit_and_miss] == [True, False]
    assert hit_and_miss[0].tool_calls == [ToolCall("add", {"a": 2})] and hit_and_miss[0].finish_reason == "tool"
    assert hit_and_miss[0].latency_s == stored.latency_s  # the answer's own timings, as generated
    assert [len(b) for b in inner.batches] == [1]  # only the miss was generated
    assert sink.completed == {0: "five", 1: "fresh"}  # each row told as numbered in the whole batch
    assert (again.hits, again.misses) == (1, 1)


def test_a_run_answered_from_the_cache_never_loads_its_backend(tmp_path):
    first = cached(tmp_path)
    first.load()
    first.generate([request()])
    inner = FakeBackend()
    again = cached(tmp_path, inner)
    again.load()
    again.count_tokens([request()])
    assert again.generate([request()])[0].cached and not inner.loaded
    again.generate([request(max_new_tokens=3)])  # a miss: now it loads
    assert inner.loaded


def test_failures_are_not_cached(tmp_path):
    failing = cached(tmp_path, FakeBackend([Reply(error="boom"), Reply(error="gone", unavailable=True)]))
    failing.load()
    assert [c.failed for c in failing.generate([request(), request(max_new_tokens=3)])] == [True, True]
    later = cached(tmp_path, FakeBackend(lambda r: "ok"))
    later.load()
    assert [c.cached for c in later.generate([request(), request(max_new_tokens=3)])] == [False, False]


class Scored(FakeBackend):
    """A fake with log-likelihoods: each continuation's is minus its length; counts what it was asked."""

    asked = 0

    def loglikelihoods(self, requests):
        self.asked += len(requests)
        return [ChoicesResult([Continuation(-float(len(c)), True, 1) for c in r.continuations], context_tokens=3)
                for r in requests]


def test_log_likelihoods_are_cached_by_context_and_continuations(tmp_path):
    choices = ChoicesRequest([Message("user", "2+3=")], [" 5", " 6"], key="q1")
    first = cached(tmp_path, Scored())
    first.loglikelihoods([choices])
    inner = Scored()
    again = cached(tmp_path, inner)
    (hit, miss) = again.loglikelihoods([choices, replace(choices, continuations=[" 5", " 7"])])
    assert hit.cached and [c.loglikelihood for c in hit.continuations] == [-2.0, -2.0] and not miss.cached
    assert inner.asked == 1


# --- the in-process model: its files and the plan's settings ----------------------------------------------------

def transformers_key(tmp_path: Path, model: Path = DEMO_MODEL, **sections) -> str:
    from pipeline.stages.plan import plan
    from pipeline.stages.resolve import resolve

    config = make_config(model, DEMO_DATASET, **sections)
    config.dataset.limit = 1
    config.cache = CacheConfig(enabled=True, dir=str(tmp_path / "cache"))
    _, _, backend = plan(config, resolve(config.runtime, config.backend), tmp_path / "run", ())
    assert isinstance(backend, CachingBackend)
    key = backend.request_key(request())
    assert key is not None
    return key


def _flip_last_byte(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))


def _edit_template(folder: Path) -> None:
    template = folder / "chat_template.jinja"
    text = template.read_text()
    assert "<|end|>" in text
    template.write_text(text.replace("<|end|>", "<|eot|>"))


@pytest.fixture(scope="module")
def demo_key(tmp_path_factory) -> str:
    return transformers_key(tmp_path_factory.mktemp("demo"))


def test_the_same_model_in_another_folder_hits(tmp_path, demo_key):
    assert transformers_key(tmp_path, model_copy(tmp_path, lambda folder: None)) == demo_key


def _edit_tokenizer(folder: Path) -> None:  # the same prompt text, other tokens: only the files' digest shows it
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": 77}))


@pytest.mark.parametrize("change", [_flip_last_byte, _edit_template, _edit_tokenizer,
                                    lambda f: (f / "generation_config.json").write_text('{"top_k": 3}')],
                         ids=["weights", "chat template file", "tokenizer", "generation config"])
def test_a_changed_model_file_misses(tmp_path, demo_key, change):
    assert transformers_key(tmp_path, model_copy(tmp_path, change)) != demo_key


@pytest.mark.parametrize("section", [
    dict(session=SessionConfig(prefill="The answer is")),  # only the rendered prompt shows it
    dict(session=SessionConfig(chat_template=False)),
    dict(session=SessionConfig(truncation="left")),
    dict(generation=GenerationConfig(thinking_budget=5)),
], ids=["prefill", "no chat template", "truncation", "thinking budget"])
def test_a_changed_session_or_plan_setting_misses(tmp_path, demo_key, section):
    assert transformers_key(tmp_path, **section) != demo_key


def test_a_template_argument_the_template_does_not_read_changes_no_prompt_and_hits(tmp_path, demo_key):
    assert transformers_key(tmp_path, session=SessionConfig(template_args={"unread": "hi"})) == demo_key


def test_a_changed_dtype_misses(tmp_path, demo_key):
    from pipeline.core.config import RuntimeConfig

    runtime = RuntimeConfig(model=str(DEMO_MODEL), device="cpu", batch_size=2, dtype="bfloat16")
    assert transformers_key(tmp_path, runtime=runtime) != demo_key


def test_no_secret_reaches_a_served_models_key_or_the_cache_files(tmp_path, monkeypatch):
    from pipeline.backends.openai import OpenAIBackend
    from pipeline.backends.openai.config import OpenAIConfig

    monkeypatch.setenv("SECRET_KEY_ENV", "sk-key-hunter2")
    served = OpenAIBackend(OpenAIConfig(base_url="http://user:pass-hunter2@127.0.0.1:9/v1",
                                        api_key_env="SECRET_KEY_ENV", headers={"X-Token": "header-hunter2"}), "demo")
    served.generate = lambda requests, sink=None: [Completion(text="5") for _ in requests]  # type: ignore
    assert "hunter2" not in json.dumps(served.cache_identity())
    backend = cached(tmp_path, served)
    backend.generate([request()])
    assert backend.hits == 0 and cached(tmp_path, served).generate([request()])[0].cached
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path


# --- the store: processes at once, kills, size ---------------------------------------------------------------

def _write_many(folder: str, writer: int, barrier) -> None:
    store = ResponseStore(Path(folder), 10**9)
    barrier.wait()  # both processes write from the same moment on
    for start in range(0, 200, 10):
        first = start + writer * 100
        store.put_many({f"k{i}": {"value": i, "by": writer} for i in range(first, first + 10)})


def test_two_processes_write_at_once_and_every_entry_reads_back_whole(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(2)
    workers = [spawn.Process(target=_write_many, args=(str(tmp_path), n, barrier)) for n in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    store = ResponseStore(tmp_path, 10**9)
    entries = dict(store.entries())
    assert sorted(entries) == sorted(f"k{i}" for i in range(300))  # 0-199 and 100-299: the middle written twice
    assert all(entry["value"] == int(key[1:]) for key, entry in entries.items())


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
import diskcache
from pipeline.backends.cache_store import ResponseStore

store = ResponseStore(Path(sys.argv[1]), 10**9)
store.put_many({"kept": {"value": "x" * 100}})
if sys.argv[2] == "file":  # killed once the large value's file is written, before its row is
    store_file = diskcache.Disk.store
    def store_then_die(self, *args, **kwargs):
        stored = store_file(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    diskcache.Disk.store = store_then_die
    store.put_many({"big": {"value": "y" * 100_000}})
else:  # killed as its transaction of several entries commits
    def die_at_commit(statement):
        if statement.strip().upper().startswith("COMMIT"):
            os.kill(os.getpid(), signal.SIGKILL)
    store._cache._con.set_trace_callback(die_at_commit)
    store.put_many({f"batch{i}": {"value": "z" * (10 if i % 2 else 50_000)} for i in range(4)})
"""


@pytest.mark.parametrize("where", ["file", "commit"])
def test_a_writer_killed_mid_write_leaves_no_entry_half_written(tmp_path, where):
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path), where], capture_output=True,
                            timeout=120)
    assert result.returncode == -9, result.stderr.decode()
    store = ResponseStore(tmp_path, 10**9)
    assert [key for key, _ in store.entries()] == ["kept"]
    assert store.get("big") is None and store.get("batch0") is None and store.get("batch1") is None
    # diskcache's own consistency check: only the large values' files are left, with no entry to serve them
    problems = [str(w.message) for w in store._cache.check()]
    assert len(problems) == {"file": 1, "commit": 2}[where] and all("unknown file" in p for p in problems), problems
    assert store.clear() == 1 and store._cache.check() == []  # clearing removes them too
    store.put_many({"after": {"value": 1}})
    assert store.get("after")["value"] == 1


def test_the_store_keeps_to_its_size_limit_by_evicting_the_oldest(tmp_path):
    store = ResponseStore(tmp_path, 400_000)
    for i in range(45):
        store.put_many({f"k{i}": {"value": "v" * 40_000}})
        assert store.stats()["bytes"] < 400_000 + 50_000  # past the limit by one entry at most, until the next write
    assert store.stats()["entries"] < 45 and store.get("k0") is None and store.get("k44") is not None


def test_an_entry_that_does_not_read_back_is_a_miss(tmp_path):
    store = ResponseStore(tmp_path, 10**9)
    store._cache.set("a", "{not json")
    store._cache.set("b", json.dumps({"key": "other", "format": 1}))  # stored under another key
    assert store.get("a") is None and store.get("b") is None


class Payload:
    """What a pickled entry planted in a shared cache folder could run when unpickled: here, create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickled_entry_planted_in_the_folder_is_never_unpickled(tmp_path):
    import diskcache

    store = ResponseStore(tmp_path / "cache", 10**9)
    store.put_many({"ours": {"value": 1}})
    planted = diskcache.Cache(str(tmp_path / "cache"))  # diskcache's default: objects are pickled
    planted.set("theirs", Payload(tmp_path / "ran"))
    planted.set(("a", "tuple", "key"), "text")
    assert store.get("theirs") is None and not (tmp_path / "ran").exists()
    assert [key for key, _ in store.entries()] == ["ours"] and not (tmp_path / "ran").exists()


def test_python_m_pipeline_cache_shows_lists_and_clears(tmp_path):
    backend = cached(tmp_path)
    backend.load()
    backend.generate([request(), request(max_new_tokens=3)])

    def cache(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cache", *args, "--dir", str(tmp_path / "cache")],
                              capture_output=True, text=True, timeout=120)

    shown = cache()
    assert shown.returncode == 0 and "entries  2" in shown.stdout, shown.stderr
    listed = json.loads(cache("list", "--json").stdout)
    assert {row["request"] for row in listed} == {"add-000/0"} and len(listed) == 2
    assert "you said" in listed[0]["answer"]
    assert cache("clear").stdout.startswith("removed 2 entries")
    assert "entries  0" in cache().stdout
    (tmp_path / "file").write_text("")
    refused = subprocess.run([sys.executable, "-m", "pipeline.cache", "--dir", str(tmp_path / "file")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "is a file" in refused.stderr


@pytest.mark.parametrize("setting, said", [
    ("cache.size_limit=lots", "cache.size_limit='lots' is not allowed: expected a size such as 512MiB"),
    ("cache.dir={file}", "cache.dir={file}: the response cache cannot be opened there"),
])
def test_a_cache_setting_that_cannot_work_is_one_line_exit_2_and_nothing_is_created(tmp_path, monkeypatch, capsys,
                                                                                    setting, said):
    from tests.conftest import run_main

    (tmp_path / "file").write_text("")
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["cache.enabled=true", "tracking=none", setting.format(file=tmp_path / "file")],
                         monkeypatch, capsys)
    assert code == 2 and said.format(file=tmp_path / "file") in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_the_summary_counts_hits_and_leaves_them_out_of_the_speed_figures():
    from pipeline.stages.summarize import summarize

    def record(sample: str, cached: bool, latency: float) -> dict:
        return {"sample_id": sample, "sample_index": 0, "messages": [], "response": "5", "reference": "5",
                "score": 1.0, "prompt_tokens": 10, "completion_tokens": 4, "finish_reason": "stop",
                "ttft_s": latency / 2, "latency_s": latency, "batch": int(cached), "config_hash": "", "cached": cached}

    summary = summarize([record("a", False, 1.0), record("b", True, 100.0)], {"execute": 2.0})
    assert summary.cache_hits == 1 and summary.metrics()["cache_hits"] == 1.0 and summary.num_samples == 2
    assert summary.latency_p95_s == 1.0 and summary.tokens_per_second == 2.0  # 4 generated tokens in 2 s
    assert summary.decode_tokens_per_second == pytest.approx(3 / 0.5)  # the generated batch's alone
