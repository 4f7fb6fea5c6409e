"""Images and audio through the transformers backend: tiny random multimodal models, loaded with
their processors, planned, batched and run end to end (tests/tiny_media_models.py builds them)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.helpers.planning import plan_in_process
from pipeline.core.errors import UserError
from pipeline.stages.resolve import resolve
from tests.conftest import make_config, only_run_dir, run_main, snapshot, write_jsonl
from tests.helpers.tiny_media_models import (
    build_tiny_audio_model,
    build_tiny_vision_model,
    png,
    wav,
)


@pytest.fixture(scope="session")
def vision_model(tmp_path_factory) -> Path:
    return build_tiny_vision_model(tmp_path_factory.mktemp("models") / "llava")


@pytest.fixture(scope="session")
def audio_model(tmp_path_factory) -> Path:
    return build_tiny_audio_model(tmp_path_factory.mktemp("models") / "qwen2audio")


def run_here(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`python -m pipeline ARGV` in this process, for runs that succeed as well: (exit code, stderr)."""
    import sys

    from pipeline.__main__ import main

    monkeypatch.setattr(sys, "argv", ["pipeline", *argv])
    monkeypatch.delenv("PIPELINE_RUN_TOKEN", raising=False)
    try:
        main()
        code = 0
    except SystemExit as exited:
        code = exited.code or 0
    return code, capsys.readouterr().err


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def text(value: str) -> dict:
    return {"type": "text", "text": value}


@pytest.fixture
def pictures(tmp_path) -> Path:
    """A dataset whose records have 0, 1, 2 and 1 images, in one folder with their PNGs."""
    for number in (12, 47, 85):
        png(tmp_path / f"n{number}.png", number)
    return write_jsonl(tmp_path / "pics.jsonl", [
        {"id": "none", "messages": user(text("Hi?"))},
        {"id": "one", "messages": user({"type": "image", "path": "n12.png"}, text("What?"))},
        {"id": "two", "messages": user({"type": "image", "path": "n47.png"}, {"type": "image", "path": "n85.png"},
                                       text("Which?"))},
        {"id": "other", "messages": user({"type": "image", "path": "n85.png"}, text("What?"))},
    ])


def processor_count(model: Path, messages: list[dict], images: list, audio: list = ()) -> int:
    """Tokens of the prompt as the model's own processor makes them, independently of the pipeline."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model, local_files_only=True)
    bare = [{"role": m["role"], "content": [{"type": p["type"]} if p["type"] != "text" else p for p in m["content"]]}
            for m in messages]
    prompt = processor.apply_chat_template(bare, add_generation_prompt=True, tokenize=False)
    options = {"images": images} if images else {}
    if audio:
        options.update(audio=list(audio), sampling_rate=16000)
    return len(processor(text=[prompt], add_special_tokens=False, **options)["input_ids"][0])


def test_the_plan_counts_image_tokens_and_the_tower_as_the_model_has_them(vision_model, pictures):
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    config = make_config(vision_model, pictures)
    plan, samples, _ = plan_in_process(config)
    records = [json.loads(line) for line in pictures.read_text().splitlines()]
    expected = {}
    for record in records:
        images = [Image.open(pictures.parent / p["path"]).convert("RGB") for m in record["messages"]
                  for p in m["content"] if p["type"] == "image"]
        expected[record["id"]] = processor_count(vision_model, record["messages"], images)
    assert expected["two"] - expected["one"] == 16 + 1  # a second image: 16 tokens; "Which?" is 1 longer than "What?"
    assert plan.longest_prompt_sample == "two" and plan.longest_prompt_tokens == expected["two"]
    model = AutoModelForImageTextToText.from_pretrained(vision_model)
    tower = sum(p.numel() for p in model.model.vision_tower.parameters())
    assert tower > 0 and plan.memory.weights_bytes == 4 * sum(p.numel() for p in model.parameters())
    assert any("3 image or audio part(s)" in check or "4 image or audio part(s)" in check for check in plan.checks)
    # the KV cache is sized for the longest prompt with its image tokens
    assert plan.memory.sequence_tokens == expected["two"] + config.generation.max_new_tokens


def test_batches_mixing_0_1_and_2_images_answer_as_one_by_one(vision_model, pictures, tmp_path, monkeypatch, capsys):
    answers = {}
    for batch in (4, 1):
        cwd = tmp_path / f"b{batch}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        code, err = run_here([f"runtime.model={vision_model}", f"dataset.path={pictures}", "tracking=none",
                              f"runtime.batch_size={batch}", "runtime.device=cpu"], monkeypatch, capsys)
        assert code == 0, err
        rows = [json.loads(line) for line in (only_run_dir(cwd) / "transcript.jsonl").read_text().splitlines()]
        assert {row["batch"] for row in rows} == ({0} if batch == 4 else {0, 1, 2, 3})
        answers[batch] = {row["sample_id"]: (row["response"], row["prompt_tokens"]) for row in rows}
        media = {row["sample_id"]: row["messages"][0].get("media", []) for row in rows}
        assert [len(media[i]) for i in ("none", "one", "two", "other")] == [0, 1, 2, 1]
        assert all(part["path"].endswith(".png") and len(part["sha256"]) == 64 for part in media["two"])
    assert answers[4] == answers[1]
    # random weights: the answer follows the image, so another image gives another answer
    assert answers[4]["one"][0] != answers[4]["other"][0]


@pytest.mark.slow
def test_a_vision_run_end_to_end(vision_model, pictures, tmp_path):
    from tests.conftest import run_pipeline

    result = run_pipeline([f"runtime.model={vision_model}", f"dataset.path={pictures}", "tracking=none",
                           "dataset.limit=2"], tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads((only_run_dir(tmp_path) / "plan.json").read_text())
    assert any("counted by the model's processor" in check for check in plan["checks"])


@pytest.mark.parametrize("change, problem", [
    (lambda folder: (folder / "n12.png").unlink(), "pics.jsonl:2: messages[0].content[0]: image 'n12.png' does not exist"),
    (lambda folder: (folder / "n47.png").write_bytes(b"\x89PNG broken"),
     "pics.jsonl:3: messages[0].content[0]: image 'n47.png' is not a readable image"),
])
def test_a_missing_or_broken_image_stops_the_run_before_anything(vision_model, pictures, tmp_path, monkeypatch,
                                                                 capsys, change, problem):
    change(pictures.parent)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, err = run_main([f"runtime.model={vision_model}", f"dataset.path={pictures}", "tracking=none"],
                         monkeypatch, capsys)
    assert code == 2 and problem in err and "Traceback" not in err
    assert snapshot(cwd) == {}


def test_images_on_a_text_model_and_urls_are_refused_at_plan_time(tiny_model, vision_model, tmp_path):
    png(tmp_path / "cat.png", 1)
    dataset = write_jsonl(tmp_path / "img.jsonl", [{"id": "pic", "messages": user(
        text("What is this?"), {"type": "image", "path": "cat.png"})}])
    config = make_config(tiny_model, dataset)
    with pytest.raises(UserError, match="sample 'pic' has an image part .* takes text only"):
        plan_in_process(config)
    remote = write_jsonl(tmp_path / "url.jsonl", [{"id": "u", "messages": user(
        {"type": "image", "url": "https://example.com/cat.png"}, text("?"))}])
    config = make_config(vision_model, remote)
    with pytest.raises(UserError, match="nothing is downloaded unless runtime.allow_download=true"):
        plan_in_process(config)
    # with runtime.allow_download=true the plan fetches it: tests/backends/test_media_fetch.py


def test_audio_through_the_processor(audio_model, tmp_path, monkeypatch, capsys):
    import numpy as np

    from pipeline.data.media import decode_audio

    for frequency in (220, 3000):
        wav(tmp_path / f"t{frequency}.wav", frequency)
    dataset = write_jsonl(tmp_path / "clips.jsonl", [
        {"id": f"t{f}", "messages": user({"type": "audio", "path": f"t{f}.wav"}, text("What?"))} for f in (220, 3000)])
    config = make_config(audio_model, dataset)
    plan, _, _ = plan_in_process(config)
    clip = decode_audio((tmp_path / "t220.wav").read_bytes())
    assert isinstance(clip, np.ndarray) and len(clip) == 8000
    record = json.loads(dataset.read_text().splitlines()[0])
    assert plan.longest_prompt_tokens == processor_count(audio_model, record["messages"], [], [clip])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, err = run_here([f"runtime.model={audio_model}", f"dataset.path={dataset}", "tracking=none",
                          "runtime.device=cpu"], monkeypatch, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (only_run_dir(cwd) / "transcript.jsonl").read_text().splitlines()]
    assert rows[0]["messages"][0]["media"][0]["seconds"] == 0.5
    assert rows[0]["response"] != rows[1]["response"]  # the answer follows the clip


def test_the_client_and_the_chat_take_images(vision_model, tiny_model, tmp_path):
    from pipeline.cli.chat import chat
    from pipeline.client import RuntimeClient

    first, second = png(tmp_path / "a.png", 12), png(tmp_path / "b.png", 85)
    client = RuntimeClient.from_overrides([f"runtime.model={vision_model}", "runtime.device=cpu"])
    with_first = client.prompt("What?", images=[str(first)])
    assert with_first.prompt_tokens == processor_count(
        vision_model, user({"type": "image"}, text("What?")), [__import__("PIL.Image").Image.open(first).convert("RGB")])
    assert client.prompt("What?", images=[str(second)]).text != with_first.text
    with pytest.raises(UserError, match=r"images\[0\]: image .*missing.png' does not exist"):
        client.prompt("What?", images=[str(tmp_path / "missing.png")])

    out = io.StringIO()
    turns = chat(client, tmp_path, io.StringIO(f"/image {first}\nWhat?\n/image {tmp_path / 'nope.png'}\n"), out)
    shown = out.getvalue()
    assert turns == 1 and "attached, 32x32" in shown and f"model> {with_first.text}\n" in shown
    assert "does not exist" in shown
    saved = json.loads((tmp_path / "conversation.json").read_text())
    assert saved[0]["media"][0]["path"] == str(first.resolve())

    text_only = RuntimeClient.from_overrides([f"runtime.model={tiny_model}", "runtime.device=cpu"])
    with pytest.raises(UserError, match="takes text only, not image"):
        text_only.prompt("What?", images=[str(first)])


@pytest.mark.slow
def test_the_vision_experiment_runs_with_and_without_the_image_and_compares(tmp_path):
    """+experiment=vision: the committed vision demo over its held-out images and over blank ones:
    it reads numbers it never saw in training from the image, and cannot from a blank one."""
    from tests.conftest import run_pipeline

    result = run_pipeline(["+experiment=vision", "tracking=none", "hydra.sweep.dir=runs/vision"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    answers = {}
    for job in (tmp_path / "runs" / "vision").iterdir():
        if (job / "transcript.jsonl").is_file():
            name = json.loads((job / "config.json").read_text())["dataset"]["name"]
            rows = [json.loads(line) for line in (job / "transcript.jsonl").read_text().splitlines()]
            answers[name] = {row["sample_id"]: row["response"] for row in rows}
            paths = {part["path"] for row in rows for part in row["messages"][0]["media"]}
            assert all(path.endswith(".png") for path in paths)
            if name == "vision_digits_blank":
                assert len(paths) == 1
    assert set(answers) == {"vision_digits", "vision_digits_blank"}
    seen, blank = answers["vision_digits"], answers["vision_digits_blank"]
    assert len(seen) == len(blank) == 36
    assert sum(seen[i] != blank[i] for i in seen) >= 32 and len(set(seen.values())) >= 18
    accuracy = {name: json.loads((job / "summary.json").read_text())["accuracy"]
                for job in (tmp_path / "runs" / "vision").iterdir() if (job / "summary.json").is_file()
                for name in [json.loads((job / "config.json").read_text())["dataset"]["name"]]}
    assert accuracy["vision_digits"] >= 0.8 and accuracy["vision_digits_blank"] <= 0.1
    comparison = (tmp_path / "runs" / "vision" / "comparison" / "comparison.md").read_text()
    assert "vision_digits_blank" in comparison and "accuracy" in comparison
