"""The bad-input catalogue: user mistakes across the command line, config, model folders, dataset and
conversation files, output folders and resumes. Each must give one line that names the thing and
the fix, the right exit code, no traceback, and leave nothing lost or half-written: no new files
where none should be, and existing run folders byte for byte as they were.

The cases run `pipeline.__main__.main()` in this process (what `python -m pipeline` runs, with
its argv), which keeps 40 cases within seconds; the last test runs a few through a real
`python -m pipeline` to show the in-process runs stand for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from pipeline.core.config import ASSETS_DIR, to_config
from pipeline.core.redact import redact
from pipeline.run.status import locked
from tests.conftest import model_copy, run_main, run_pipeline, snapshot, write_jsonl

DEMO_MODEL = ASSETS_DIR / "demo_model"
OK = ["tracking=none", "dataset.limit=3", "pipeline.until=plan"]  # a valid run that stops before loading


def fake_run(tmp: Path, overrides: list[str], transcript: str = "") -> Path:
    """A run folder as a killed run leaves it: its command line, config, status and transcript."""
    from hydra import compose, initialize_config_dir

    from pipeline.core.config import CONF_DIR

    folder = tmp / "runs" / "2026-01-01" / "10-00-00_abcdef"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  overrides:\n    hydra: []\n    task:\n" + "".join(f"    - {o}\n" for o in overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = to_config(compose(config_name="config", overrides=overrides))
    (folder / "config.json").write_text(json.dumps(redact(config.to_dict()), default=str))
    (folder / "status.json").write_text(json.dumps({"state": "interrupted", "reason": "", "time": 0}))
    if transcript:
        (folder / "transcript.jsonl").write_text(transcript)
    return folder


def record_line(sample_id: str) -> str:
    return json.dumps({"sample_id": sample_id, "sample_index": 0, "kind": "answer", "response": "1",
                       "config_hash": "x", "batch": 0}) + "\n"


# (id, setup(tmp) -> argv, exit code, regex the message must match)
CASES: list[tuple[str, Callable[[Path], list[str]], int, str]] = [
    # the command line and the config
    ("override without a value", lambda t: ["generation.temperature"], 2, r"generation.temperature"),
    ("unclosed bracket", lambda t: ["generation.stop=[a"], 2, r"generation.stop=\[a: cannot read this override.*quote"),
    ("unknown key", lambda t: ["generation.colour=blue"], 2, r"generation.colour: unknown key; allowed keys here"),
    ("unknown group option", lambda t: ["generation=fancy"], 2, r"generation.*fancy.*greedy"),
    ("wrong type", lambda t: ["generation.temperature=hot"], 2, r"generation.temperature.*hot"),
    ("wrong type for a flag", lambda t: ["tracking.enabled=perhaps"], 2, r"tracking.enabled.*perhaps"),
    ("out of range top_p", lambda t: ["generation.top_p=1.5"], 2, r"generation.top_p=1.5 is not allowed: expected"),
    ("zero new tokens", lambda t: ["generation.max_new_tokens=0"], 2, r"generation.max_new_tokens=0 .*integer >= 1"),
    ("negative limit", lambda t: ["dataset.limit=-1"], 2, r"dataset.limit=-1 .*integer >= 1"),
    ("batch size zero", lambda t: ["runtime.batch_size=0"], 2, r"runtime.batch_size=0 .*integer >= 1 or auto"),
    ("unknown device", lambda t: ["runtime.device=tpu"], 2, r"runtime.device='tpu' .*one of auto, cpu"),
    ("unknown stage", lambda t: ["pipeline.until=everything"], 2, r"pipeline.until='everything' .*resolve"),
    ("not a tracking uri", lambda t: ["tracking.uri=mlflow.db"], 2, r"tracking.uri='mlflow.db' .*sqlite:///"),
    ("tracking timeout zero", lambda t: ["tracking.timeout_s=0"], 2, r"tracking.timeout_s=0.*> 0"),
    ("memory limit not a size", lambda t: ["runtime.memory_limit=lots"], 2, r"runtime.memory_limit='lots' .*6GiB"),
    ("missing mandatory value", lambda t: ["runtime.model=???"], 2, r"runtime.model='\?\?\?' .*set runtime.model="),
    ("unresolvable interpolation", lambda t: ["dataset.path=${nowhere.path}"], 2,
     r"dataset.path: cannot resolve interpolation"),
    ("several values without -m", lambda t: ["generation.temperature=0,1"], 2, r"add -m to sweep"),
    ("one bad value in a sweep", lambda t: ["-m", "generation.temperature=0,-1"], 2,
     r"generation.temperature=-1.0 is not allowed"),
    # model folders
    ("model folder missing", lambda t: [f"runtime.model={t / 'nope'}"] + OK, 2, r"runtime.model=.*path not found"),
    ("empty model folder", lambda t: [f"runtime.model={(t / 'empty').mkdir() or t / 'empty'}"] + OK, 2,
     r"runtime.model=.*config.json"),
    ("no weights", lambda t: [f"runtime.model={model_copy(t, lambda f: (f / 'model.safetensors').unlink())}"] + OK,
     2, r"runtime.model=.*(no weight|safetensors)"),
    ("corrupt safetensors", lambda t: [
        f"runtime.model={model_copy(t, lambda f: (f / 'model.safetensors').write_bytes(b'not a tensor file'))}"] + OK,
     2, r"model.safetensors"),
    ("truncated safetensors", lambda t: [f"runtime.model={model_copy(t, _truncate)}"] + OK, 2, r"model.safetensors"),
    ("config.json not JSON", lambda t: [
        f"runtime.model={model_copy(t, lambda f: (f / 'config.json').write_text('{oops'))}"] + OK, 2, r"config.json"),
    # datasets and conversation files
    ("dataset missing", lambda t: [f"dataset.path={t / 'missing.jsonl'}"] + OK[:1], 2,
     r"dataset.path=.*file not found"),
    ("empty dataset", lambda t: [f"dataset.path={write_jsonl(t / 'empty.jsonl', [])}"] + OK[:1], 2,
     r"dataset.path=.*no samples"),
    ("bad JSONL line", lambda t: [f"dataset.path={write_jsonl(t / 'd.jsonl', [{'prompt': 'a'}, '{oops'])}"] + OK[:1],
     2, r"d.jsonl:2: not valid JSON"),
    ("duplicate sample ids", lambda t: [f"dataset.path={write_jsonl(t / 'd.jsonl', [{'id': 1, 'prompt': 'a'}, {'id': 1, 'prompt': 'b'}])}"]
     + OK[:1], 2, r"d.jsonl:2: duplicate id '1' \(first on line 1\)"),
    ("record without a prompt", lambda t: [f"dataset.path={write_jsonl(t / 'd.jsonl', [{'id': 1}])}"] + OK[:1], 2,
     r"d.jsonl:1: a record needs a prompt"),
    ("reference of the wrong type", lambda t: [
        f"dataset.path={write_jsonl(t / 'd.jsonl', [{'prompt': 'a', 'reference': [1]}])}"] + OK[:1], 2,
     r"d.jsonl:1: reference must be a string or a number"),
    ("prompt over the context", lambda t: [
        f"dataset.path={write_jsonl(t / 'd.jsonl', [{'id': 'long', 'prompt': 'What is ' + '1+' * 300 + '1?'}])}"]
     + OK[:1], 2, r"'long'.*(context|tokens).*session.truncation=left|(context|tokens).*'long'"),
    ("bad turns in a conversation", lambda t: [
        f"dataset.path={write_jsonl(t / 'd.jsonl', [{'id': 'c', 'turns': [1]}])}"] + OK[:1], 2,
     r"d.jsonl:1: turns\[0\] must be"),
    ("history file missing", lambda t: [f"session.history={t / 'chat.json'}"] + OK, 2, r"session.history=.*chat.json"),
    ("history file not JSON", lambda t: [f"session.history={_write(t / 'chat.json', '[{oops')}"] + OK, 2,
     r"session.history=.*chat.json"),
    # output folders and resumes
    ("run folder blocked by a file", lambda t: [f"hydra.run.dir={_write(t / 'afile', 'x')}/run"] + OK, 2,
     r"hydra.run.dir=.*afile is a file; choose another folder"),
    ("run folder that holds a run", lambda t: [f"hydra.run.dir={fake_run(t, OK)}"] + OK, 2,
     r"already holds a run: continue it with python -m pipeline resume="),
    ("resume a missing folder", lambda t: [f"resume={t / 'runs' / 'nope'}"], 2, r"resume=.*no such run folder"),
    ("resume last without runs", lambda t: ["resume=last"], 2, r"resume=last: there is no run under"),
    ("resume a folder that is no run", lambda t: [f"resume={(t / 'plain').mkdir() or t / 'plain'}"], 2,
     r"plain is not a run folder of this pipeline \(it has no status\.json\)"),
    ("resume with other settings", lambda t: [f"resume={fake_run(t, OK)}", "generation.temperature=0.7"], 2,
     r"settings differ from the run's.*generation.temperature: 0.0 in the run, 0.7 now"),
    ("resume a corrupt transcript", lambda t: [
        f"resume={fake_run(t, ['tracking=none', 'dataset.limit=3'], record_line('a') + 'garbage' + chr(10) + record_line('b'))}"],
     2, r"transcript.jsonl:2: not a transcript record"),
]


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:4096])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("setup, code, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_mistake_is_one_line_naming_it_and_the_fix_and_loses_nothing(setup, code, message, tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path)
    before = snapshot(tmp_path)
    exit_code, stderr = run_main(argv, monkeypatch, capsys)
    assert exit_code == code, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(("config error: ", "error: ")), last
    assert __import__("re").search(message, last), last
    assert snapshot(tmp_path) == before, "files were created or changed"


def test_resuming_a_folder_in_use_is_refused_without_touching_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = fake_run(tmp_path, OK)
    before = snapshot(tmp_path)
    with locked(folder):
        code, stderr = run_main([f"resume={folder}"], monkeypatch, capsys)
    assert code == 2 and "is in use by another run" in stderr.strip().splitlines()[-1]
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_mistakes_through_the_real_command_line(tmp_path):
    """A config mistake, a dataset mistake found while planning and a bad resume, as a user meets them."""
    for args, expected in [(["generation.top_p=1.5"], "config error: generation.top_p=1.5 is not allowed"),
                           ([f"dataset.path={write_jsonl(tmp_path / 'e.jsonl', [])}"], "error: dataset.path="),
                           (["resume=last"], "error: resume=last: there is no run under")]:
        result = run_pipeline(args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"], "a refused run leaves nothing behind"
