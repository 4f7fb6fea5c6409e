"""The shipped demo model: held out honestly, loads from local files, and scores above a floor."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pipeline.backends.transformers.load import load, load_tokenizer
from tests.helpers.planning import plan_in_process
from pipeline.core.config import (
    ASSETS_DIR,
    Config,
    DatasetConfig,
    GenerationConfig,
    SessionConfig,
)
from pipeline.core.transcript import TranscriptWriter, read_transcript
from pipeline.stages.execute import execute
from pipeline.stages.resolve import resolve
from pipeline.stages.score import score_records
from tests.conftest import in_process

ROOT = Path(__file__).resolve().parents[2]
GREEDY_FLOOR = 0.9  # measured greedy accuracy is in README.md; the floor leaves room for other CPUs


def training_script():
    sys.path.insert(0, str(ROOT / "scripts"))  # as `python scripts/train_demo_model.py` has it: its sibling modules
    spec = importlib.util.spec_from_file_location("train_demo_model", ROOT / "scripts" / "train_demo_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pairs_in(path: Path) -> set[tuple[int, int]]:
    pairs = set()
    for line in path.read_text().splitlines():
        record = json.loads(line)
        prompt = record["prompt"] if "prompt" in record else record["messages"][-1]["content"]
        a, b = prompt.removeprefix("What is ").removesuffix("?").split("+")
        assert int(record["reference"]) == int(a) + int(b)
        pairs.add((int(a), int(b)))
    return pairs


def test_the_demo_datasets_are_held_out_from_training():
    train, held_out = training_script().split_pairs()
    evaluation = pairs_in(ASSETS_DIR / "datasets" / "addition.jsonl")
    assert len(evaluation) == 200 and evaluation == set(held_out)
    assert not evaluation & set(train)
    assert pairs_in(ASSETS_DIR / "datasets" / "addition_chat.jsonl") <= evaluation


def test_the_demo_model_folder_is_small_and_complete():
    folder = ASSETS_DIR / "demo_model"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 6 * 2**20
    resolved = resolve(Config().runtime)
    assert resolved.alias == "demo" and resolved.has_chat_template and resolved.has_generation_config
    tokenizer = load_tokenizer(resolved)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12+34?"}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len("What is 12+34?") + 4  # <s>, <|user|>, <|end|>, <|assistant|> are one token each
    assert tokenizer.decode(tokenizer("46 is it", add_special_tokens=False)["input_ids"]) == "46 is it"


def accuracy(tmp_path: Path, generation: GenerationConfig, session: SessionConfig = SessionConfig()) -> float:
    config = Config(generation=generation, session=session,
                    dataset=DatasetConfig(path=str(ASSETS_DIR / "datasets" / "addition.jsonl")))
    config.runtime.batch_size = 50
    result, samples, template = plan_in_process(config)
    runtime = load(result, template)
    path = tmp_path / "transcript.jsonl"
    path.unlink(missing_ok=True)
    with TranscriptWriter(path) as writer:
        execute(in_process(runtime, config), samples, config, writer, config.config_hash())
    records = score_records(read_transcript(path), config.dataset.scorer)  # the score stage's part
    return sum(r["score"] for r in records) / len(records)


def test_greedy_beats_the_floor_and_high_temperature_does_visibly_worse(tmp_path):
    greedy = accuracy(tmp_path, GenerationConfig())
    hot = accuracy(tmp_path, GenerationConfig(temperature=1.5, seed=1))
    assert greedy >= GREEDY_FLOOR
    assert greedy - hot >= 0.1, (greedy, hot)


@pytest.mark.parametrize("system_prompt", ["You are a careful calculator. Answer with the number only.",
                                           "You are a concise math tutor."])
def test_a_system_prompt_does_not_break_the_demo_model(tmp_path, system_prompt):
    assert accuracy(tmp_path, GenerationConfig(), SessionConfig(system_prompt=system_prompt)) >= GREEDY_FLOOR - 0.05
