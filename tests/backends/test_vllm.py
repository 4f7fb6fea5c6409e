"""backend=vllm against backend=transformers on the same models: log-likelihoods (multiple choice and perplexity) in
this process, and runs through `python -m pipeline backend=vllm` whose answers and choice log-likelihoods are the
transformers backend's; settings vLLM would refuse are refused before any engine starts.

The in-process checks use the test session's one engine over the tool model (tests/conftest.py's `vllm_tools`);
the runs start their own, in their own process. Everything that needs vLLM skips where it is not installed
(pip install -e ".[vllm]"). The common contract (stops, lengths, seeds, tools, sinks) is the conformance suite's
(tests/backends/test_backends.py), which runs against vLLM too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.backends.base import ChoicesRequest, Request
from pipeline.core.config import ASSETS_DIR, SessionConfig
from pipeline.core.records import Message
from tests.conftest import make_config, only_run_dir, run_main, run_pipeline, write_jsonl
from tests.helpers.planning import plan_in_process
from tests.helpers.vllm_engine import ADD_TOOL

TOOL_MODEL = ASSETS_DIR / "tool_model"
CLOSE = 1e-3  # nats: both run the model in float32 on the CPU


@pytest.fixture(scope="module")
def transformers_tools(tmp_path_factory):
    """The transformers backend over the same tool model, as the reference."""
    from pipeline.backends.transformers.backend import TransformersBackend

    dataset = write_jsonl(tmp_path_factory.mktemp("data") / "q.jsonl", [{"id": "q", "prompt": "1+2?"}])
    config = make_config(TOOL_MODEL, dataset, session=SessionConfig(tools=[ADD_TOOL]))
    plan, _, template = plan_in_process(config)
    backend = TransformersBackend(plan, config.session, template)
    backend.load()
    yield backend
    backend.close()


def test_multiple_choice_log_likelihoods_are_the_transformers_backends(vllm_tools, transformers_tools):
    vllm, _ = vllm_tools
    question = [Message("user", "What is 4821+3907?")]
    (greedy,) = vllm.generate([Request(question, max_new_tokens=8)])  # the model's own answer: a greedy choice
    requests = [ChoicesRequest(question, [greedy.text, "8727", "9", " 8728 and more"]),
                ChoicesRequest([Message("user", "1+2?")], ["3", "4"])]
    ours, theirs = vllm.loglikelihoods(requests), transformers_tools.loglikelihoods(requests)
    differences = []
    for mine, reference in zip(ours, theirs):
        assert mine.error is None and mine.context_tokens == reference.context_tokens > 0
        for a, b in zip(mine.continuations, reference.continuations, strict=True):
            assert (a.tokens, a.is_greedy, a.merged) == (b.tokens, b.is_greedy, b.merged)
            differences.append(abs(a.loglikelihood - b.loglikelihood))
    assert max(differences) < CLOSE, f"largest difference {max(differences):.2e}"
    first = ours[0].continuations
    assert len({round(c.loglikelihood, 2) for c in first}) == len(first)  # each choice scored on its own tokens
    assert first[0].is_greedy and not any(c.is_greedy for c in first[1:])


def test_rolling_log_likelihoods_are_the_transformers_backends(vllm_tools, transformers_tools):
    vllm, _ = vllm_tools
    texts = ["What is 4821+3907? 8728", "4821+3907=8728, and 1+2=3. " * 3]
    ours, theirs = vllm.rolling_loglikelihoods(texts), transformers_tools.rolling_loglikelihoods(texts)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.error is None and (mine.tokens, mine.windows) == (reference.tokens, reference.windows) == \
            (mine.tokens, 1)
        assert mine.loglikelihood < 0 and abs(mine.loglikelihood - reference.loglikelihood) < CLOSE


def test_a_text_longer_than_the_context_is_read_in_windows_each_token_once(vllm_tools):
    vllm, _ = vllm_tools
    text = "4821+3907=8728. " * 40  # a token a character: 640 tokens over a context of 256
    (whole,) = vllm.rolling_loglikelihoods([text])
    (half,) = vllm.rolling_loglikelihoods([text[:len(text) // 2]])
    window = vllm.context_length - 2
    assert whole.tokens == len(text) and whole.windows == -(-len(text) // window)
    assert whole.loglikelihood < half.loglikelihood < 0


def test_the_engine_leaves_torchs_threads_to_the_rest_of_the_process(vllm_tools):
    """vLLM's CPU worker replaces torch.set_num_threads with a warning; a transformers model beside it sets them."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_closed_engine_lets_the_next_start_in_this_process(vllm_tools):
    """After close(), a sweep's next job, or a judge after the answering model, starts an engine in the same process
    and answers as before. Done on the session's engine, loaded again: vLLM's parallel groups are the process's, and
    a second engine beside it would take them down when it stopped (the pipeline never runs two at once)."""
    backend, tools = vllm_tools

    def answer() -> str:
        (completion,) = backend.generate([Request([Message("user", "What is 86+87?")], max_new_tokens=8)])
        assert completion.error is None
        return completion.text

    before = answer()
    backend.close()
    assert backend.llm is None
    backend.load()
    assert answer() == before


def test_the_engine_leaves_the_environment_our_subprocesses_inherit(vllm_tools):
    """vLLM's CPU platform puts its tcmalloc and PyTorch's libgomp in LD_PRELOAD for processes it would spawn: every
    process ours starts afterwards (plots, a sweep's workers, a server; here: the tests' own runs) would load them
    before Python starts. The session's engine has started; the variable is as this process began."""
    from tests.conftest import STARTING_LD_PRELOAD

    assert os.environ.get("LD_PRELOAD") == STARTING_LD_PRELOAD


def both(tmp_path: Path, *args: str) -> dict[str, Path]:
    """The run folders of `python -m pipeline ARGS` with backend=vllm and with backend=transformers."""
    pytest.importorskip("vllm", reason='backend=vllm needs vLLM: pip install -e ".[vllm]"')
    runs = {}
    for name, chosen in (("vllm", ["backend=vllm"]), ("transformers", [])):
        (tmp_path / name).mkdir()
        done = run_pipeline([*chosen, *args, "tracking=none"], tmp_path / name, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = only_run_dir(tmp_path / name)
    return runs


def records(run: Path) -> dict[str, dict]:
    return {f"{r['sample_id']}/{r['sample_index']}": r for r in map(json.loads, (run / "transcript.jsonl").open())}


def same(runs: dict[str, Path], fields: tuple[str, ...], count: int) -> dict[str, dict]:
    """backend=vllm's records, once each has the transformers backend's `fields`."""
    ours, theirs = records(runs["vllm"]), records(runs["transformers"])
    assert len(ours) == count and ours.keys() == theirs.keys()
    for key, record in ours.items():
        assert record["status"] == "ok", record["error"]
        assert {f: record[f] for f in fields} == {f: theirs[key][f] for f in fields}, key
    return ours


@pytest.mark.slow
def test_a_run_with_backend_vllm_answers_the_demo_dataset_as_transformers_does(tmp_path):
    runs = both(tmp_path)
    same(runs, ("response", "finish_reason", "completion_tokens", "prompt_tokens"), 200)  # greedy, float32: token for token
    summary = json.loads((runs["vllm"] / "summary.json").read_text())
    reference = json.loads((runs["transformers"] / "summary.json").read_text())
    assert summary["num_errors"] == 0 and summary["accuracy"] == reference["accuracy"] >= 0.9
    plan = json.loads((runs["vllm"] / "plan.json").read_text())
    assert plan["backend"] == "vllm" and plan["backend_options"]["max_model_len"] == 256


@pytest.mark.slow
def test_a_multiple_choice_run_with_backend_vllm_scores_as_transformers_does(tmp_path):
    runs = both(tmp_path, "dataset=addition_choice", "dataset.limit=40")
    theirs = records(runs["transformers"])
    for key, record in same(runs, ("score",), 40).items():
        mine, reference = record["loglikelihood"], theirs[key]["loglikelihood"]
        assert (mine["prediction"], mine["is_greedy"], mine["tokens"]) == \
            (reference["prediction"], reference["is_greedy"], reference["tokens"]), key
        assert max(abs(a - b) for a, b in zip(mine["loglikelihoods"], reference["loglikelihoods"], strict=True)) < CLOSE


@pytest.mark.slow
def test_a_thinking_budget_on_backend_vllm_splits_and_counts_as_transformers_does(tmp_path):
    """In parts on vLLM (the thinking up to the budget, the close forced, the answer), by a logits processor in
    transformers: the same thinking, answer and counts, token for token."""
    runs = both(tmp_path, "runtime.model=thinking-demo", "dataset=thinking_addition", "dataset.limit=8",
                "generation.thinking=on", "generation.thinking_budget=12")
    ours = same(runs, ("response", "reasoning", "reasoning_tokens", "answer_tokens", "completion_tokens",
                       "finish_reason", "reasoning_truncated"), 8)
    assert {r["reasoning_tokens"] for r in ours.values()} == {10, 12}  # the budget binds the longer thinkings


@pytest.mark.parametrize("setting, named", [
    ("backend.gpu_memory_utilization=2", "backend.gpu_memory_utilization=2"),
    ("backend.dtype=float8", "backend.dtype='float8'"),
    ("backend.max_num_seqs=0", "backend.max_num_seqs=0"),
    ("backend.max_model_len=100000", "backend.max_model_len=100000"),  # over the demo model's 256: vLLM refuses it
    ("runtime.dtype=float32", "runtime.dtype=float32 is a setting of backend=transformers"),
])
def test_a_bad_setting_is_refused_in_one_line_before_any_engine_starts(setting, named, tmp_path, monkeypatch, capsys):
    if "max_model_len" in setting:  # checked against the model in the plan, once vLLM is known to be there
        pytest.importorskip("vllm", reason='backend=vllm needs vLLM: pip install -e ".[vllm]"')
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["backend=vllm", setting, "tracking=none"], monkeypatch, capsys)
    [line] = [line for line in err.splitlines() if "error:" in line]  # the others: stages' timings
    assert code == 2 and named in line and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_without_vllm_the_plan_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import importlib.util

    from pipeline.backends.vllm import kind

    real = importlib.util.find_spec
    monkeypatch.setattr(kind.importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["backend=vllm", "tracking=none"], monkeypatch, capsys)
    [line] = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and 'pip install -e ".[vllm]"' in line and "Traceback" not in err, err
