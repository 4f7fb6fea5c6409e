"""The OpenAI-compatible backend against vLLM's own server (tests/helpers/vllm_server.py, one per test
session), through pipeline.backends.openai and through `python -m pipeline backend=openai` end to end.

The server runs the demo model in float32 (`--dtype float32`: vLLM casts a float32 model to bfloat16
by default on CPU, which moves each choice's log-likelihood by up to 0.08), so its answers and
log-likelihoods can be held to the in-process transformers backend's. It applies the model folder's
chat template to chat requests, streams, honours per-request seeds, and answers /v1/completions with
`echo` and `logprobs` (the multiple-choice probe that the stub servers of test_server_loglikelihood.py
only imitate).
"""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.backends.base import Request
from pipeline.core.records import Message
from tests.conftest import DEMO_DATASET, only_run_dir, run_pipeline

SUMS = [json.loads(line) for line in DEMO_DATASET.read_text().splitlines()[:16]]


def backend(served, **settings):
    from pipeline.backends.openai import OpenAIBackend, OpenAIConfig

    return OpenAIBackend(OpenAIConfig(base_url=served.base_url, **settings), served.model)


class Pieces:
    """A stream sink that keeps every piece of text as it arrives, per row."""

    streams_text = True

    def __init__(self) -> None:
        self.pieces: dict[int, list[str]] = {}

    def on_text(self, row: int, text: str) -> None:
        self.pieces.setdefault(row, []).append(text)

    def on_complete(self, row: int, text: str) -> None:
        pass


def test_greedy_chat_streams_the_same_answers_as_unstreamed_and_right(vllm_served):
    requests = [Request([Message("user", s["prompt"])], max_new_tokens=16, key=s["id"]) for s in SUMS]
    sink = Pieces()
    completions = backend(vllm_served).generate(requests, sink)
    assert [c.error for c in completions] == [None] * len(SUMS)
    assert [c.text for c in completions] == [s["reference"] for s in SUMS]  # the demo model knows its sums
    for row, completion in enumerate(completions):
        # streamed: the text came in pieces, at most one per token (vLLM's server sends the tokens of several engine
        # steps in one event when the client reads slower than it generates), and the first came before the last
        assert "".join(sink.pieces[row]) == completion.text
        assert 1 <= len(sink.pieces[row]) <= completion.completion_tokens - 1
        assert 0 < completion.ttft_s < completion.latency_s  # measured: the end came in a later event
        assert completion.prompt_tokens > 0 and completion.finish_reason == "stop"
    assert any(len(pieces) > 1 for pieces in sink.pieces.values()), sink.pieces  # not one event per answer
    unstreamed = [httpx.post(f"{vllm_served.base_url}/chat/completions", timeout=60, json={
        "model": vllm_served.model, "messages": [{"role": "user", "content": s["prompt"]}], "max_tokens": 16,
        "temperature": 0}).json()["choices"][0]["message"]["content"] for s in SUMS[:4]]
    assert unstreamed == [c.text for c in completions[:4]]


def test_a_seed_gives_the_same_sample_in_any_company_and_again(vllm_served):
    def sample(seeds: list[int]) -> list[str]:
        requests = [Request([Message("user", "Tell me a story.")], max_new_tokens=16, temperature=1.5, seed=seed,
                            key=f"seed-{seed}-{index}") for index, seed in enumerate(seeds)]
        completions = backend(vllm_served, max_concurrency=8).generate(requests)
        assert [c.error for c in completions] == [None] * len(seeds)
        return [c.text for c in completions]

    first = sample([1, 2, 3, 4, 1, 2, 3, 4])  # eight in flight at once
    assert first[:4] == first[4:]
    assert len(set(first[:4])) == 4  # at temperature 1.5 the demo model wanders: each seed its own sample
    assert sample([3, 1]) == [first[2], first[0]]  # later, in other company: the same samples


def _transcript(cwd) -> list[dict]:
    return [json.loads(line) for line in (only_run_dir(cwd) / "transcript.jsonl").read_text().splitlines()]


def _served(server) -> list[str]:
    return ["backend=openai", f"backend.base_url={server.base_url}", f"runtime.model={server.model}"]


def test_a_run_against_vllm_answers_as_the_transformers_backend(vllm_served, tmp_path):
    common = ["tracking=none", "dataset.limit=24"]
    served, local = tmp_path / "served", tmp_path / "local"
    served.mkdir(), local.mkdir()
    result = run_pipeline([*common, *_served(vllm_served)], served)
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_pipeline([*common, "backend=transformers"], local).returncode == 0
    theirs, ours = _transcript(served), _transcript(local)
    assert [(r["sample_id"], r["response"]) for r in theirs] == [(r["sample_id"], r["response"]) for r in ours]
    assert all(r["score"] == 1.0 for r in theirs) and len(theirs) == 24
    assert all(r["ttft_s"] > 0 for r in theirs)  # each answer streamed, its first token timed
    # the plan counted the prompts with vLLM's /tokenize (its chat template) and read its context from /models
    plan = json.loads((only_run_dir(served) / "plan.json").read_text())["backend_plan"]
    assert (plan["token_source"], plan["context_length"]) == ("server", 256)
    assert plan["prompt_tokens"] == [r["prompt_tokens"] for r in theirs]


def test_multiple_choice_through_vllm_completions_scores_as_in_process(vllm_served, tmp_path):
    common = ["tracking=none", "dataset=addition_choice", "session.chat_template=false"]
    served, local = tmp_path / "served", tmp_path / "local"
    served.mkdir(), local.mkdir()
    result = run_pipeline([*common, *_served(vllm_served)], served)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads((only_run_dir(served) / "plan.json").read_text())
    assert any("returns the prompt's log-probabilities" in check for check in plan["checks"])
    assert run_pipeline([*common, "backend=transformers"], local).returncode == 0
    theirs = {r["sample_id"]: r["loglikelihood"] for r in _transcript(served)}
    ours = {r["sample_id"]: r["loglikelihood"] for r in _transcript(local)}
    assert theirs.keys() == ours.keys() and len(ours) == 100
    for key in ours:  # float32 on both sides: the same numbers up to summation order (6e-6 seen)
        assert theirs[key]["loglikelihoods"] == pytest.approx(ours[key]["loglikelihoods"], abs=1e-4)
        assert (theirs[key]["tokens"], theirs[key]["is_greedy"]) == (ours[key]["tokens"], ours[key]["is_greedy"])
    theirs, ours = (json.loads((only_run_dir(cwd) / "summary.json").read_text()) for cwd in (served, local))
    assert (theirs["accuracy"], theirs["likelihood"]) == (ours["accuracy"], ours["likelihood"])  # acc, acc_norm, ...
