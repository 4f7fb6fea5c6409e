"""backend=openai with images: `python -m pipeline` sends each image as an image_url data URL to a
real `transformers serve` over a tiny random Llava, and gets the answers the in-process run gives."""

from __future__ import annotations

import json

import pytest

from tests.conftest import only_run_dir, run_pipeline, write_jsonl
from tests.helpers.openai_server import serving, serving_extra_missing
from tests.helpers.tiny_media_models import build_tiny_vision_model, png

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(serving_extra_missing() is not None, reason=str(serving_extra_missing()))]


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory):
    folder = build_tiny_vision_model(tmp_path_factory.mktemp("models") / "llava")
    with serving(folder, tmp_path_factory.mktemp("serve") / "serve.log") as server:
        yield server


def test_images_reach_the_server_as_data_urls_and_answer_as_in_process(vision_server, tmp_path):
    for number in (12, 85):
        png(tmp_path / "data" / f"n{number}.png", number)
    dataset = write_jsonl(tmp_path / "data" / "pics.jsonl", [
        {"id": f"n{n}", "messages": [{"role": "user", "content": [{"type": "image", "path": f"n{n}.png"},
                                                                  {"type": "text", "text": "What?"}]}]}
        for n in (12, 85)])
    common = [f"dataset.path={dataset}", "tracking=none", "generation.max_new_tokens=5"]
    answers = {}
    for where, extra in (("local", [f"runtime.model={vision_server.model}"]),
                         ("served", ["backend=openai", f"backend.base_url={vision_server.base_url}",
                                     f"runtime.model={vision_server.model}", "backend.modalities=[text,image]"])):
        cwd = tmp_path / where
        cwd.mkdir()
        result = run_pipeline([*common, *extra], cwd)
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in (only_run_dir(cwd) / "transcript.jsonl").read_text().splitlines()]
        answers[where] = {row["sample_id"]: row["response"] for row in rows}
        assert all(len(row["messages"][0]["media"][0]["sha256"]) == 64 for row in rows)
    assert answers["served"] == answers["local"] and answers["local"]["n12"] != answers["local"]["n85"]

    refused = tmp_path / "refused"
    refused.mkdir()
    result = run_pipeline([*common, "backend=openai", f"backend.base_url={vision_server.base_url}",
                           f"runtime.model={vision_server.model}"], refused)
    assert result.returncode == 2 and "backend.modalities=['text']; add image there if the model takes it" in result.stderr
    assert not (refused / "runs").exists() or not any((refused / "runs").glob("*/*/transcript.jsonl"))
