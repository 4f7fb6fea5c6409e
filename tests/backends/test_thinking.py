"""Reasoning models end to end: the thinking demo model's switch through its chat template, the
budget enforced to the exact token on the transformers backend, continuation on length, thinking
that never closes scored as no answer, the plan's refusals (one line, exit 2), and the
thinking_budget experiment through `python -m pipeline`."""

from __future__ import annotations

import csv
import functools
import json
import re
from itertools import pairwise
from pathlib import Path

import pytest

from pipeline.backends.base import Completion
from pipeline.backends.fake import FakeBackend
from pipeline.core.config import (
    ASSETS_DIR,
    BackendConfig,
    Config,
    DatasetConfig,
    GenerationConfig,
    RuntimeConfig,
)
from pipeline.core.records import Message, Sample
from pipeline.core.transcript import TranscriptWriter, read_transcript
from pipeline.stages.execute import execute
from pipeline.stages.score import score_records
from tests.conftest import only_run_dir, run_main, run_pipeline

MODEL = ASSETS_DIR / "thinking_model"
DATASET = ASSETS_DIR / "datasets" / "thinking_addition.jsonl"


def questions(limit: int) -> list[dict]:
    return [json.loads(line) for line in DATASET.read_text().splitlines()[:limit]]


def operands(prompt: str) -> tuple[int, int]:
    a, b = prompt.removeprefix("What is ").removesuffix("?").split("+")
    return int(a), int(b)


def full_thinking(sample_id: str) -> str:
    """The whole column-by-column thinking the training script teaches for this held-out question
    (one token per character: its length is the reasoning tokens of an unbounded answer)."""
    (question,) = [q for q in questions(200) if q["id"] == sample_id]
    return _training_script().reasoning_text(*operands(question["prompt"]))


@pytest.fixture(scope="module")
def thinking_run(tmp_path_factory):
    """Run the thinking model in process over the first samples with given generation settings: the records."""
    from pipeline.stages.plan import plan
    from pipeline.stages.resolve import resolve

    folder = tmp_path_factory.mktemp("thinking")
    done: dict[str, list[dict]] = {}  # in-process records by settings: the server test compares with the same runs

    def run(limit: int = 8, backend_only: bool = False, served=None, **generation):
        """`served`: a TransformersServe of the model, reached with backend=openai (backend.tokenizer named)."""
        key = repr((limit, GenerationConfig(**generation)))
        if served is None and not backend_only and key in done:
            return [dict(record) for record in done[key]]
        runtime = RuntimeConfig(model=served.model) if served else RuntimeConfig(model=str(MODEL), device="cpu",
                                                                                 batch_size=8)
        backend = BackendConfig(name="openai", base_url=served.base_url, tokenizer=str(MODEL)) if served else \
            BackendConfig()
        config = Config(runtime=runtime, backend=backend, dataset=DatasetConfig(path=str(DATASET), limit=limit),
                        generation=GenerationConfig(**generation))
        resolved = resolve(config.runtime, config.backend)
        runtime_plan, samples, backend = plan(config, resolved, folder, [])
        backend.load()
        if backend_only:
            return backend
        path = folder / f"t{len(list(folder.glob('t*.jsonl')))}.jsonl"
        with TranscriptWriter(path) as writer:
            execute(backend, samples, config, writer, config.config_hash())
        backend.close()
        records = score_records(read_transcript(path), config.dataset.scorer)  # the score stage's part
        if served is None:
            done[key] = [dict(record) for record in records]
        return records

    return run


def test_the_budget_is_enforced_to_the_exact_token(thinking_run):
    for budget in (0, 3, 11):
        records = thinking_run(thinking="on", thinking_budget=budget, max_new_tokens=10)
        # the thinking is 10 to 46 tokens: cut at the budget, or closed by the model where it is shorter
        expected = [min(budget, len(full_thinking(r["sample_id"]))) for r in records]
        assert [r["reasoning_tokens"] for r in records] == expected, budget
        assert budget < 10 or any(len(full_thinking(r["sample_id"])) < budget for r in records)
        for record in records:  # cut off, it still answers: digits, no thinking in the response
            assert record["response"].isdigit() and "think" not in record["response"]
            assert not record["reasoning_truncated"] and record["finish_reason"] == "stop"
            assert 1 <= record["answer_tokens"] <= 8


def test_a_wrapup_is_forced_before_the_close(thinking_run):
    records = thinking_run(limit=4, thinking="on", thinking_budget=9, thinking_wrapup="OK.")
    assert len(records) == 4  # something to check
    for record in records:  # 9 tokens of the model's, then the 3 of the wrap-up, then </think>
        assert record["reasoning_tokens"] == 12 and record["reasoning"].endswith("OK.")


class _Sink:
    streams_text = True

    def __init__(self):
        self.text, self.reasoning, self.complete = {}, {}, {}

    def on_text(self, row, text):
        self.text[row] = self.text.get(row, "") + text

    def on_reasoning(self, row, text):
        self.reasoning[row] = self.reasoning.get(row, "") + text

    def on_complete(self, row, text):
        self.complete[row] = text


def test_a_stream_sink_gets_the_answer_apart_from_the_thinking(thinking_run):
    from pipeline.backends.base import Request

    backend = thinking_run(backend_only=True, thinking="on")
    sink = _Sink()
    requests = [Request(messages=[Message("user", q["prompt"])], max_new_tokens=8) for q in questions(3)]
    completions = backend.generate(requests, sink)
    backend.close()
    assert len(completions) == 3 and set(sink.complete) == set(sink.text) == set(sink.reasoning) == {0, 1, 2}
    for row, completion in enumerate(completions):
        assert sink.text[row] == sink.complete[row] == completion.text and completion.text.isdigit()
        lines = full_thinking(questions(3)[row]["id"]).count("=")  # one per column
        assert sink.reasoning[row] == completion.reasoning and completion.reasoning.count("=") == lines


def test_traces_show_the_reasoning_apart_from_the_answer():
    from pipeline.tracking.traces import chat_output

    (choice,) = chat_output({"response": "8728", "reasoning": "1+7+0=08", "finish_reason": "stop"})["choices"]
    assert choice["message"] == {"role": "assistant", "content": "8728", "reasoning_content": "1+7+0=08"}
    assert "reasoning_content" not in chat_output({"response": "5"})["choices"][0]["message"]


def test_thinking_on_and_off_through_the_template(thinking_run):
    on = thinking_run(thinking="on", max_new_tokens=10)
    off = thinking_run(thinking="off", max_new_tokens=10)
    # on: the thinking has one line per column (10 to 46 tokens, the questions mix their lengths)
    assert all(r["reasoning_tokens"] == len(full_thinking(r["sample_id"])) for r in on)
    assert all(r["reasoning"].count("=") == full_thinking(r["sample_id"]).count("=") for r in on)
    assert len({r["reasoning_tokens"] for r in on}) > 1
    assert all(r["reasoning"] == "" and r["reasoning_tokens"] == 0 for r in off)
    # only the answer is scored; thinking beats answering at once
    assert all(r["score"] == (r["response"] == r["reference"]) and "think" not in r["response"] for r in on + off)
    assert sum(r["score"] for r in on) >= len(on) / 2 and sum(r["score"] for r in on) > sum(r["score"] for r in off)
    right = next(r for r in on if r["score"] and int(r["reference"]) >= 100)
    assert right["reference"] not in right["reasoning"].replace("\n", "")


def test_an_answer_cut_by_length_is_continued(thinking_run):
    # answer tokens count from the closing tag: "\n\n", then the digits (one of them, at this limit)
    cut = thinking_run(limit=4, thinking="on", max_new_tokens=3)
    assert all(r["finish_reason"] == "length" and len(r["response"]) == 1 and r["answer_tokens"] == 3 for r in cut)
    continued = thinking_run(limit=4, thinking="on", max_new_tokens=3, continue_on_length=3)
    whole = thinking_run(limit=4, thinking="on", max_new_tokens=10)
    for record, uncut in zip(continued, whole):  # continued, the answer is what the model says uncut
        assert record["finish_reason"] == "stop" and record["continuations"] >= 1
        assert record["response"] == uncut["response"] and record["reasoning"] == uncut["reasoning"]
    assert any(len(r["response"]) > 3 for r in continued)  # some took two continuations


class _NeverCloses(FakeBackend):
    """Thinking that runs out: the completion carries only reasoning."""

    def generate(self, requests, sink=None):
        return [Completion(text="", reasoning="12+34 is", completion_tokens=5, reasoning_tokens=5,
                           reasoning_truncated=True, finish_reason="length") for _ in requests]


def test_thinking_that_never_closes_is_scored_as_no_answer(tmp_path):
    backend = _NeverCloses()
    backend.load()
    config = Config()
    path = tmp_path / "t.jsonl"
    samples = [Sample(id="a", messages=(Message("user", "What is 12+34?"),), reference="")]
    with TranscriptWriter(path) as writer:
        execute(backend, samples, config, writer, config.config_hash())
    (record,) = score_records(read_transcript(path), config.dataset.scorer)
    # the empty reference would match the empty answer: truncated thinking is no answer, whatever the scorer
    assert record["score"] == 0.0 and record["response"] == "" and record["reasoning"] == "12+34 is"
    assert record["reasoning_truncated"] and record["reasoning_tokens"] == 5 and record["answer_tokens"] == 0


def test_earlier_turns_lose_their_thinking_as_the_template_says():
    from pipeline.data.chat_template import ChatTemplate

    template = ChatTemplate.from_folder(MODEL)
    history = [{"role": "user", "content": "What is 1000+2000?"},
               {"role": "assistant", "content": "<think>\n0+0+0=00\n</think>\n\n3000"},
               {"role": "user", "content": "What is 4821+3907?"}]
    text = template.render(history)
    assert "<|assistant|>3000<|end|>" in text and "0+0+0" not in text and text.endswith("<|assistant|>")
    assert template.render(history[-1:], enable_thinking=False).endswith("<think>\n\n</think>\n\n")


@pytest.mark.parametrize("args,expected", [
    (["generation.thinking_budget=-1"], "generation.thinking_budget=-1 is not allowed"),
    (["generation.thinking=maybe"], "generation.thinking='maybe' is not allowed"),
    (["generation.thinking=on"], "model 'demo' cannot think"),
    (["generation.reasoning_effort=high", "runtime.model=thinking-demo"], "does not read reasoning_effort"),
    (["generation.thinking_wrapup=Done.", "runtime.model=thinking-demo"], "generation.thinking_wrapup"),
    # refused before any request (nothing listens on port 9: a request would fail otherwise)
    (["backend=openai", "backend.base_url=http://127.0.0.1:9/v1", "runtime.model=m", "generation.thinking_budget=8"],
     "generation.thinking_budget=8 with backend=openai: the prompt is rendered here and sent in parts to the "
     "server's /v1/completions, which needs the served model's chat template and tokenizer; name a local folder "
     "with them in backend.tokenizer"),
    (["runtime.model=thinking-demo", "generation.thinking_budget=240"],
     "prompt of 18 tokens + 250 new tokens at most (generation.thinking_budget=240 + 2 tag tokens + "
     "generation.max_new_tokens=8) exceeds the model's context of 256 tokens"),
])
def test_bad_thinking_settings_are_one_line_and_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_main([*args, "tracking=none"], monkeypatch, capsys)
    assert code == 2 and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_thinking_off_is_refused_for_a_template_without_a_switch(tmp_path, monkeypatch, capsys):
    import shutil

    model = tmp_path / "r1"
    shutil.copytree(MODEL, model)
    # DeepSeek-R1 style: the template opens the thinking itself, with no variable to turn it off
    (model / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
    monkeypatch.chdir(tmp_path)
    code, err = run_main([f"runtime.model={model}", "generation.thinking=off", "tracking=none"], monkeypatch, capsys)
    assert code == 2 and "has no switch for thinking" in err and "Traceback" not in err


def test_the_plan_says_what_it_found_and_how_it_switches(tmp_path):
    result = run_pipeline(["runtime.model=thinking-demo", "dataset=thinking_addition", "generation.thinking=off",
                           "pipeline.until=plan", "tracking=none"], tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout[result.stdout.index("{"):])
    thinking = plan["thinking"]
    assert thinking["template_args"] == {"enable_thinking": False}
    assert "enable_thinking" in thinking["found"] and "enable_thinking=false" in thinking["how"]


def test_the_budget_experiment_end_to_end(tmp_path):
    result = run_pipeline(["+experiment=thinking_budget", "dataset.limit=24", "tracking=none"], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((tmp_path / "runs" / "multirun").glob("*/*"))
    rows = list(csv.DictReader((sweep / "comparison" / "comparison.csv").open()))
    by_budget = {row["generation.thinking_budget"]: row for row in rows}
    budgets = ["0", "10", "20", "30", "40", "50", "null"]
    assert set(by_budget) == set(budgets)
    accuracy = [float(by_budget[budget]["accuracy"]) for budget in budgets]
    tokens = {budget: float(row["reasoning_tokens_mean"]) for budget, row in by_budget.items()}
    # the thinking takes 10 to 46 tokens (1 to 5 columns, mixed evenly): each 10 more tokens of budget
    # let the model finish one more column count, so the accuracy climbs in steps; 50 never binds
    assert all(later >= earlier for earlier, later in pairwise(accuracy)), accuracy
    assert accuracy[-1] >= accuracy[0] + 0.4 and accuracy[2] > accuracy[0] and accuracy[-1] > accuracy[3]
    assert tokens["0"] == 0 and tokens["10"] == 10 and tokens["20"] < 20 and tokens["50"] == tokens["null"]
    whole = [len(full_thinking(q["id"])) for q in questions(24)]
    assert abs(tokens["null"] - sum(whole) / len(whole)) < 1
    plots = {path.name for path in (sweep / "comparison" / "plots").glob("*.png")}
    assert "accuracy_vs_generation.thinking_budget.png" in plots
    assert "reasoning_tokens_mean_vs_generation.thinking_budget.png" in plots


@pytest.mark.slow
def test_thinking_switched_through_transformers_serve(tmp_path_factory, thinking_run):
    """backend=openai: enable_thinking goes as chat_template_kwargs; the server streams the tags in the text
    (no response template for this model type) and the answer is split from the thinking as in process.
    With backend.tokenizer the prompt is rendered here and sent in parts to /v1/completions: the same budget
    gives the same split, token for token, as in process."""
    from tests.helpers.openai_server import TransformersServe, serving_extra_missing

    if serving_extra_missing() is not None:
        pytest.skip(str(serving_extra_missing()))
    server = TransformersServe(MODEL, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        server.wait()
        records = {}
        for mode in ("on", "off"):
            cwd = tmp_path_factory.mktemp(mode)
            result = run_pipeline(["backend=openai", f"backend.base_url={server.base_url}",
                                   f"runtime.model={server.model}", "dataset=thinking_addition", "dataset.limit=4",
                                   f"generation.thinking={mode}", "generation.max_new_tokens=64", "tracking=none"],
                                  cwd)
            assert result.returncode == 0, result.stderr[-2000:]
            records[mode] = read_transcript(only_run_dir(cwd) / "transcript.jsonl")
        assert all(r["reasoning"].count("=") == full_thinking(r["sample_id"]).count("=") and r["response"].isdigit()
                   for r in records["on"])
        assert sum(r["response"] == r["reference"] for r in records["on"]) >= 2
        assert all(r["reasoning"] == "" and "think" not in r["response"] for r in records["off"])
        cwd = tmp_path_factory.mktemp("budget")
        result = run_pipeline(["backend=openai", f"backend.base_url={server.base_url}", f"runtime.model={server.model}",
                               f"backend.tokenizer={MODEL}", "dataset=thinking_addition", "dataset.limit=8",
                               "generation.thinking=on", "generation.max_new_tokens=8", "generation.thinking_budget=11",
                               "tracking=none"], cwd)
        assert result.returncode == 0, result.stderr[-2000:]
        fields = ("response", "reasoning", "reasoning_tokens", "answer_tokens", "reasoning_truncated", "finish_reason",
                  "completion_tokens", "prompt_tokens")
        # 11 through the entry point; 0 and none through the stages, in this process. The in-process runs are
        # those of the tests above (the fixture keeps them): same samples, same settings
        for budget in (11, 0, None):
            served = read_transcript(only_run_dir(cwd) / "transcript.jsonl") if budget == 11 else \
                thinking_run(served=server, thinking="on", thinking_budget=budget)
            local = thinking_run(thinking="on", thinking_budget=budget)
            # in process, an answer at its limit ends with a forced end of turn, a token the server never generates
            local = [{**r, "completion_tokens": r["completion_tokens"] - (r["finish_reason"] == "length")} for r in local]
            assert [[r[f] for f in fields] for r in served] == [[r[f] for f in fields] for r in local], budget
            assert [r["reasoning_tokens"] for r in served] == [  # the budget binds the longer thinkings only
                min(budget if budget is not None else 99, len(full_thinking(r["sample_id"]))) for r in served], budget
    finally:
        server.stop()


def test_the_score_stage_keeps_truncated_thinking_as_no_answer_whatever_the_scorer():
    from pipeline.core.config import ScorerConfig
    from pipeline.scoring.scorers import build_scorer
    from pipeline.stages.score import score_record

    scorer = build_scorer(ScorerConfig(name="contains"))  # a re-score runs the same stage
    record = {"kind": "answer", "response": "", "reference": "", "reasoning": "12", "reasoning_truncated": True}
    assert score_record(record, scorer)["score"] == 0.0 and score_record(record, scorer)["extracted"] is None
    assert score_record({**record, "reasoning_truncated": False}, scorer)["score"] == 1.0


@functools.lru_cache(maxsize=1)
def _training_script():
    import importlib.util
    import sys

    scripts = Path(__file__).resolve().parents[2] / "scripts"
    sys.path.insert(0, str(scripts))  # as `python scripts/train_thinking_model.py` has it: its sibling modules
    spec = importlib.util.spec_from_file_location("train_thinking_model", scripts / "train_thinking_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_thinking_model_is_small_held_out_and_its_template_is_the_trained_one():
    script = _training_script()
    assert sum(p.stat().st_size for p in MODEL.iterdir()) < 4 * 2**20
    pairs = [tuple(int(n) for n in q["prompt"].removeprefix("What is ").removesuffix("?").split("+"))
             for q in questions(200)]
    assert pairs == script.held_out_pairs() and all(q["reference"] == str(a + b) for q, (a, b) in
                                                    zip(questions(200), pairs))
    assert (MODEL / "chat_template.jinja").read_text() == script.CHAT_TEMPLATE
    import random

    rng = random.Random(5)
    drawn = {script.sample_training_pair(rng) for _ in range(2000)}
    assert not drawn & script.HELD_OUT_SET


def test_a_budget_past_the_served_context_is_refused_before_any_request(tmp_path, monkeypatch, capsys):
    """backend=openai: the plan adds the budget, the tags and the answer's limit to each prompt (counted with
    backend.tokenizer, rendered as the parts will send it) against the context the server reports."""
    import sys

    from pipeline.__main__ import main
    from tests.helpers.openai_server import StubServer

    def models(handler, body):
        return 200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 64}]})

    monkeypatch.chdir(tmp_path)
    with StubServer({("GET", "/v1/models"): models}) as stub:
        argv = ["backend=openai", f"backend.base_url={stub.base_url}", "runtime.model=m", f"backend.tokenizer={MODEL}",
                "dataset=thinking_addition", "generation.thinking=on", "tracking=none"]
        code, err = run_main([*argv, "generation.thinking_budget=40"], monkeypatch, capsys)
        assert code == 2 and "Traceback" not in err
        assert re.search(r"prompt of 2\d tokens \+ 50 new tokens at most \(generation.thinking_budget=40 \+ 2 tag "
                         r"tokens \+ generation.max_new_tokens=8\) exceeds the served model's context of 64 tokens", err), err
        assert not [path for _, path, _, _ in stub.seen if path.endswith("completions")]
        monkeypatch.setattr(sys, "argv", ["pipeline", *argv, "generation.thinking_budget=25", "pipeline.until=plan"])
        main()  # the longest prompt (2x tokens) + 35 fits in 64 (conftest's _logging_kept undoes its logging)
        assert '"budget": 25' in capsys.readouterr().out
