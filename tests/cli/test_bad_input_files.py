"""Bad input files, model folders and settings, reported in our words (issue 15, items 8, 9, 11, 12; issue 24,
classes 2 and 13: damaged data anywhere in a dataset, its images and audio, found while planning).

Every file we read as text (a dataset, a history file, a model's config.json and chat template)
reports a stray byte as `path:line: not UTF-8 text (byte 0x.. at column N)`; a folder given for a
file says so; a model folder that loading would reject (no model_type, a model_type transformers
does not know, auto_map code files missing, no tokenizer) is refused by resolve; a wrong type, a
mistyped group or option names the key, the value and what is allowed, without the library's words.
Each case: exit 2, one line, no traceback, and nothing created (no run folder, no MLflow store).

The catalogue runs `pipeline.__main__.main()` in this process, as tests/test_bad_input.py does
(what `python -m pipeline ARGV` runs), so 30 cases take seconds; the model-folder cases run without
pipeline.until, so a folder resolve let through would reach the load stage and fail there (exit 1,
a run folder and a FAILED MLflow run). The slow test at the end runs some through a real
`python -m pipeline`.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import lzma
import re
import shutil
import zlib
from pathlib import Path
from typing import Callable

import pytest

from pipeline.core.config import ASSETS_DIR, DatasetConfig
from pipeline.data.dataset import load_samples
from tests.conftest import model_copy, run_main, run_pipeline, snapshot, write_jsonl

DEMO_MODEL = ASSETS_DIR / "demo_model"
SMALL = ["dataset.limit=2", "generation.max_new_tokens=2"]
# words of the libraries underneath that a user should never have to read
LIBRARY_WORDS = ("Traceback", "ListConfig", "DictConfig", "UnicodeDecodeError", "search path", "Could not find",
                 "could not be converted", "is not a subclass", "Optional", "sentencepiece or tiktoken", "BytesIO")
GOOD_LINE = '{"id": "a", "prompt": "What is 1+1?", "reference": "2"}\n'


def edit_config(**changes) -> Callable[[Path], None]:
    """A change to a model folder's config.json: set keys, or drop them (value None)."""
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            config.pop(key, None) if value is None else config.__setitem__(key, value)
        (folder / "config.json").write_text(json.dumps(config))
    return change


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


# 3000 good lines, hardly compressible, so that a compressed copy spans many reads: damage near its end lies far
# past dataset.limit, which a reader that stopped at the limit would never decode
MANY = "".join(json.dumps({"id": f"s{i}", "prompt": f"{i:x}{i * 7919 % 104729:x} {i ** 3 % 99991}?",
                           "reference": f"{i * 31337 % 65521:x}"}) + "\n" for i in range(3000)).encode()

MANY_ROWS = b"prompt,reference\n" + b"".join(b"%x+%d?,%d\n" % (i * 7919, i, i * 31337 % 65521) for i in range(20000))
BAD_ROW = b"prompt,reference\n1+1?,2\n1+2?,3\na,b,c\n"  # past dataset.limit=2: a row of three fields
BROKEN_LAST = MANY + b"{not json\n"  # line 3001
NO_RECORDS = b'{"name": "sums", "size": 3}'
NO_PROMPT = b"question,answer\n1+1?,2\n"


def _bad_deflate(data: bytes) -> bytes:
    """`data` gzip-compressed, with a deflate block three quarters of the way in that has an invalid type."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format
    cut = len(data) * 3 // 4
    head = packer.compress(data[:cut]) + packer.flush(zlib.Z_FULL_FLUSH)  # byte-aligned: the next block starts here
    tail = packer.compress(data[cut:]) + packer.flush()
    return head + bytes([0x07]) + tail[1:]  # 0x07: the last block, of type 3, which deflate does not have


def _damaged(compress: Callable[[bytes], bytes]) -> bytes:
    """MANY compressed, with bytes three quarters of the way in overwritten: the start still decodes."""
    packed = bytearray(compress(MANY))
    at = len(packed) * 3 // 4
    packed[at:at + 64] = bytes(range(64))
    return bytes(packed)


def _parquet(path: Path, damaged: bool) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in MANY.splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy", row_group_size=500)
    if damaged:  # a data page in the middle: the footer (and so the first row groups) still read
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 256] = b"\x07" * 256
        path.write_bytes(bytes(data))
    return path


def _with_part(folder: Path, kind: str, name: str, data: bytes) -> Path:
    """A dataset whose one record shows the `kind` part `name` (holding `data`), beside it."""
    (folder / name).write_bytes(data)
    part = {"type": kind, "path": name}
    return write_jsonl(folder / "media.jsonl", [{"id": "a", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]}])


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


STRAY = GOOD_LINE.encode() + b'{"id": "b", "prompt": "caf\xe9?"}\n'  # latin-1, not UTF-8: 0xe9 at line 2, column 27
HISTORY = b'[{\n  "role": "user", "content": "\xff"}]'  # byte 0xff: line 2, column 31
MODEL_CONFIG = b'{\n"a": "\xff"}'  # byte 0xff: line 2, column 7
TEMPLATE = b"{{ messages }}\xfe"  # byte 0xfe: line 1, column 15
REMOTE = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}

# (id, setup(tmp) -> argv, regex the one line must match)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # item 8: files that are not UTF-8 text, or not files
    ("dataset with a stray byte", lambda t: [f"dataset.path={_bytes(t / 'd.jsonl', STRAY)}"],
     r"d\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 27\)"),
    ("gzip dataset with a stray byte", lambda t: [f"dataset.path={_bytes(t / 'd.jsonl.gz', gzip.compress(STRAY))}"],
     r"d\.jsonl\.gz:2: not UTF-8 text \(byte 0xe9 at column 27\)"),
    ("gzip dataset cut short", lambda t: [
        f"dataset.path={_bytes(t / 'd.jsonl.gz', gzip.compress(GOOD_LINE.encode() * 50)[:40])}"],
     r"d\.jsonl\.gz:\d+: the gzip data is damaged or cut short"),
    # issue 24, class 2: damaged data anywhere in a file (here past dataset.limit) is found while planning
    ("gzip dataset with bad deflate data", lambda t: [f"dataset.path={_bytes(t / 'd.jsonl.gz', _bad_deflate(MANY))}"],
     r"d\.jsonl\.gz:\d+: the gzip data is damaged or cut short \(Error -3 while decompressing"),
    ("bzip2 dataset with damaged data", lambda t: [f"dataset.path={_bytes(t / 'd.jsonl.bz2', _damaged(bz2.compress))}"],
     r"d\.jsonl\.bz2:\d+: the bzip2 data is damaged or cut short"),
    ("xz dataset with damaged data", lambda t: [f"dataset.path={_bytes(t / 'd.jsonl.xz', _damaged(lzma.compress))}"],
     r"d\.jsonl\.xz:\d+: the xz data is damaged or cut short"),
    ("gzip CSV with bad deflate data", lambda t: [f"dataset.path={_bytes(t / 'd.csv.gz', _bad_deflate(MANY_ROWS))}"],
     r"d\.csv\.gz:\d+: the gzip data is damaged or cut short"),
    ("JSONL with a broken line past the limit", lambda t: [
        f"dataset.path={_bytes(t / 'd.jsonl', BROKEN_LAST)}"],
     r"d\.jsonl:3001: not valid JSON"),
    ("CSV with a broken row past the limit", lambda t: [
        f"dataset.path={_bytes(t / 'd.csv', BAD_ROW)}"],
     r"d\.csv:4: 3 fields, but the header has 2 \(prompt, reference\)"),
    ("Parquet with a damaged page", lambda t: [f"dataset.path={_parquet(t / 'd.parquet', damaged=True)}"],
     r"d\.parquet: the Parquet data from row \d+ on is damaged \(.*\); write the file again"),
    ("Parquet that is not Parquet", lambda t: [f"dataset.path={_bytes(t / 'd.parquet', b'PAR1' + bytes(64) + b'PAR1')}"],
     r"d\.parquet: not a Parquet file"),
    ("image that is not an image", lambda t: [f"dataset.path={_with_part(t, 'image', 'cat.png', b'not a picture')}"],
     r"media\.jsonl:1: .*image 'cat\.png' is not a readable image: not in a format Pillow reads"),
    ("image cut short", lambda t: [f"dataset.path={_with_part(t, 'image', 'cat.png', _png()[:60])}"],
     r"media\.jsonl:1: .*image 'cat\.png' is not a readable image: image file is truncated"),
    ("audio that is not audio", lambda t: [f"dataset.path={_with_part(t, 'audio', 'hello.wav', b'RIFF1234not a wave')}"],
     r"media\.jsonl:1: .*audio 'hello\.wav' is not a readable audio clip: [A-Z]"),
    # issue 24, class 13: a file that is not what its format expects says what it is and what is expected
    ("JSON object without records", lambda t: [f"dataset.path={_bytes(t / 'd.json', NO_RECORDS)}"],
     r"d\.json: a JSON object with no list of records in it \(its keys: name, size\); expected a list of records"),
    ("CSV without a prompt column", lambda t: [f"dataset.path={_bytes(t / 'd.csv', NO_PROMPT)}"],
     r"d\.csv:2: a record needs a prompt .*; this one has question, answer: name the prompt's field with "
     r"dataset\.fields\.prompt=NAME"),
    ("zstd dataset", lambda t: [f"dataset.path={_bytes(t / 'd.jsonl.zst', bytes.fromhex('28b52ffd') + b'xx')}"],
     r"d\.jsonl\.zst: zstd-compressed files cannot be read here.*zstd -d d\.jsonl\.zst"),
    ("dataset is a folder", lambda t: [f"dataset.path={_folder(t / 'data')}"],
     r"dataset\.path=.*data is a folder, expected a \.jsonl file"),
    ("history file is a folder", lambda t: [f"session.history={_folder(t / 'chats')}"],
     r"session\.history=.*chats is a folder, expected a JSON file"),
    ("history file with a stray byte", lambda t: [f"session.history={_bytes(t / 'chat.json', HISTORY)}"],
     r"session\.history=.*chat\.json:2: not UTF-8 text \(byte 0xff at column 31\)"),
    ("config.json with a stray byte", lambda t: [
        f"runtime.model={model_copy(t, lambda f: _bytes(f / 'config.json', MODEL_CONFIG))}"],
     r"runtime\.model=.*config\.json:2: not UTF-8 text \(byte 0xff at column 7\)"),
    ("chat template with a stray byte", lambda t: [
        f"runtime.model={model_copy(t, lambda f: _bytes(f / 'chat_template.jinja', TEMPLATE))}"],
     r"chat_template\.jinja:1: not UTF-8 text \(byte 0xfe at column 15\)"),
    ("transcript file given for its folder", lambda t: [
        f"pipeline.from_transcript={_bytes(t / 'transcript.jsonl', b'')}"],
     r"pipeline\.from_transcript=.*transcript\.jsonl is a file, expected a run folder"),
    # item 9 and 12: what loading would need from a model folder, checked by resolve
    ("config.json without model_type", lambda t: [f"runtime.model={model_copy(t, edit_config(model_type=None))}"],
     r"runtime\.model=.*config\.json has no model_type"),
    ("model_type transformers does not know", lambda t: [
        f"runtime.model={model_copy(t, edit_config(model_type='llama_from_the_future'))}"],
     r"model_type 'llama_from_the_future' in .*config\.json is not one the installed transformers .* knows"),
    ("auto_map code files missing", lambda t: [
        f"runtime.model={model_copy(t, edit_config(auto_map=REMOTE))}", "runtime.trust_remote_code=true"],
     r"auto_map in .*config\.json names configuration_x\.XConfig for AutoConfig, but .*configuration_x\.py is missing"),
    ("no tokenizer", lambda t: [f"runtime.model={model_copy(t, lambda f: (f / 'tokenizer.json').unlink())}"],
     r"runtime\.model=.*model has no tokenizer \(no tokenizer\.json"),
    # item 12: settings of the wrong type, mistyped groups and options
    ("a string for a list", lambda t: ["generation.stop=END"],
     r"^config error: generation\.stop='END' is not allowed: expected a list of strings, e\.g\. generation\.stop='\[END\]'$"),
    ("a list for a string", lambda t: ["session.system_prompt=[a,b]"],
     r"session\.system_prompt=\['a', 'b'\] is not allowed: expected null or a string \(quote text"),
    ("a number for a mapping", lambda t: ["session.template_args=5"],
     r"session\.template_args=5 is not allowed: expected a mapping of names to values"),
    ("a number for a group of settings", lambda t: ["session.tool_budget=3"],
     r"session\.tool_budget=3 is not allowed: expected a group of settings \(max_round_trips, .*\)"),
    ("a word for an integer", lambda t: ["generation.max_new_tokens=many"],
     r"generation\.max_new_tokens='many' is not allowed: expected an integer$"),
    ("a fraction for an integer", lambda t: ["generation.top_k=1.5"],
     r"generation\.top_k=1\.5 is not allowed: expected null or an integer$"),
    ("a word for a flag", lambda t: ["session.chat_template=maybe"],
     r"session\.chat_template='maybe' is not allowed: expected true or false$"),
    ("null for a required string", lambda t: ["runtime.model=null"], r"runtime\.model=null is not allowed: expected a string$"),
    ("a mapping for a list", lambda t: ["generation.stop={a:1}"],
     r"generation\.stop=\{a:1\} is not allowed: expected a list of strings"),
    ("mistyped option", lambda t: ["generation=samplng"],
     r"^config error: generation=samplng: no such option \(did you mean sampling\?\); available: greedy, sampling$"),
    ("mistyped option in a sweep", lambda t: ["-m", "generation=greedy,samplng"],
     r"generation=samplng: no such option .*available: greedy, sampling$"),
    ("mistyped option of a saved experiment", lambda t: ["+experiment=temprature_sweep"],
     r"experiment=temprature_sweep: no such option \(did you mean temperature_sweep\?\); available: .*seed_sweep"),
    ("mistyped launcher", lambda t: ["hydra/launcher=jobslib"], r"hydra/launcher=jobslib: no such option.*joblib"),
    ("mistyped group", lambda t: ["generaton=sampling"],
     r"generaton: no such config group or key \(did you mean generation\?\); available: .*\+experiment.*tracking"),
    ("mistyped key", lambda t: ["generation.temprature=0.5"],
     r"generation\.temprature: unknown key \(did you mean generation\.temperature\?\); allowed keys here"),
    ("+ on a key that exists", lambda t: ["+generation.temperature=1"],
     r"\+generation\.temperature: the key exists, so drop the \+: generation\.temperature=\.\.\.$"),
]


def assert_one_line_in_our_words(stderr: str, pattern: str) -> None:
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(("config error: ", "error: ")), stderr
    assert re.search(pattern, last), last
    for word in LIBRARY_WORDS:
        assert word not in stderr, f"{word!r} in {stderr!r}"


@pytest.mark.parametrize("setup, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_file_folder_or_setting_is_one_line_in_our_words_and_creates_nothing(setup, message, tmp_path,
                                                                                   monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path) + SMALL  # MLflow on (the default): a run that got as far as tracking would leave runs/
    before = snapshot(tmp_path)
    code, stderr = run_main(argv, monkeypatch, capsys)
    assert code == 2, stderr
    assert_one_line_in_our_words(stderr, message)
    assert snapshot(tmp_path) == before, "files were created or changed"


def test_a_sentencepiece_tokenizer_without_the_package_says_which_package(tmp_path, monkeypatch, capsys):
    from pipeline.core import model_files

    real = importlib.util.find_spec  # sentencepiece hidden: vLLM's install brings it
    monkeypatch.setattr(model_files.importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentencepiece" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    folder = model_copy(tmp_path, lambda f: (f / "tokenizer.json").rename(f / "tokenizer.model"))
    before = snapshot(tmp_path)
    code, stderr = run_main([f"runtime.model={folder}", *SMALL], monkeypatch, capsys)
    assert code == 2
    assert_one_line_in_our_words(stderr, r"tokenizer in .* is tokenizer\.model, which needs the sentencepiece package: "
                                         r"pip install sentencepiece")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gzip", "bzip2", "xz"])
def test_a_compressed_dataset_is_read_as_the_text_it_holds(tmp_path, compress):
    plain = write_jsonl(tmp_path / "d.jsonl", [{"id": f"s{i}", "prompt": f"{i}+1?", "reference": str(i + 1)}
                                                for i in range(3)])
    packed = _bytes(tmp_path / "d.data", compress(b"\xef\xbb\xbf" + plain.read_bytes()))  # a BOM, and no telling name
    assert load_samples(DatasetConfig(path=str(packed))) == load_samples(DatasetConfig(path=str(plain)))


def test_models_marks_a_folder_without_tokenizer_unusable_with_the_reason(tmp_path, capsys):
    from pipeline.cli.models import main

    shutil.copytree(DEMO_MODEL, tmp_path / "models" / "good")
    model_copy(tmp_path, lambda f: (f / "tokenizer.json").unlink()).rename(tmp_path / "models" / "no-tokenizer")
    assert main(["--models-dir", str(tmp_path / "models"), "--json"]) == 0
    entries = {e["reference"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["good"]["problem"] is None
    assert "has no tokenizer" in entries["no-tokenizer"]["problem"]


@pytest.mark.slow
def test_bad_inputs_through_the_real_command_line(tmp_path):
    """A few of the cases as a user meets them: `python -m pipeline ...` and `python -m pipeline.models ...`."""
    work = tmp_path / "work"
    work.mkdir()
    dataset = _bytes(tmp_path / "d.jsonl", STRAY)
    packed = _bytes(tmp_path / "d.jsonl.gz", _bad_deflate(MANY))
    no_model_type = model_copy(tmp_path, edit_config(model_type=None))
    for args, module, pattern in [
        ([f"dataset.path={dataset}"], "pipeline", r"d\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 27\)"),
        ([f"dataset.path={packed}"], "pipeline", r"d\.jsonl\.gz:\d+: the gzip data is damaged or cut short"),
        ([f"runtime.model={no_model_type}"], "pipeline", r"config\.json has no model_type"),
        (["generation.stop=END"], "pipeline", r"generation\.stop='END' is not allowed: expected a list of strings"),
        (["generation=samplng"], "pipeline", r"generation=samplng: no such option"),
        (["--models-dir", "/no/such/folder"], "pipeline.cli.models", r"^error: --models-dir /no/such/folder: no such folder"),
    ]:
        result = run_pipeline([*args, *SMALL] if module == "pipeline" else args, cwd=work, module=module)
        assert result.returncode == 2, result.stderr
        assert_one_line_in_our_words(result.stderr, pattern)
    assert list(work.iterdir()) == [], "a refused command leaves nothing behind (no runs/, no mlflow.db)"


@pytest.mark.parametrize("given", ["no-such-folder", "a-file"])
def test_models_refuses_a_models_dir_that_is_not_a_folder(tmp_path, monkeypatch, capsys, given):
    from pipeline.cli.models import main

    monkeypatch.chdir(tmp_path)
    if given == "a-file":
        (tmp_path / given).write_text("")
    before = snapshot(tmp_path)
    assert main(["--models-dir", given]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert_one_line_in_our_words(captured.err, rf"^error: --models-dir {given}: "
                                               r"(no such folder|.* is a file, expected a folder of models)")
    assert snapshot(tmp_path) == before
