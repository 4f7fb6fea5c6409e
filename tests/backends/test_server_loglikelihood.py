"""Multiple choice through an OpenAI-compatible server (/v1/completions with echo and logprobs): the same
log-likelihoods as in process, and a server that returns no prompt log-probabilities refused at plan time."""

from __future__ import annotations

import json
import threading

import pytest

from tests.conftest import DEMO_MODEL, only_run_dir, run_pipeline
from tests.helpers.openai_server import StubServer

MODEL = "demo-served"
MODELS = {("GET", "/v1/models"): lambda h, b: (200, json.dumps({"object": "list", "data": [{"id": MODEL}]}))}
COMMON = ["dataset=addition_choice", "tracking=none", "dataset.limit=6", "session.chat_template=false",
          "dataset.target_delimiter=' '"]


@pytest.fixture(scope="module")
def echo_server():
    """A server whose /completions echoes the prompt with the demo model's own log-probabilities (a character
    a token), as vLLM answers echo=true, logprobs=1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL).eval()
    lock = threading.Lock()

    def completions(handler, body):
        prompt = json.loads(body)["prompt"]
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with lock, torch.inference_mode():
            scores = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
        names = tokenizer.convert_ids_to_tokens(ids)
        values = [None] + [float(scores[i - 1, ids[i]]) for i in range(1, len(ids))]
        tops = [None] + [{tokenizer.convert_ids_to_tokens(int(scores[i - 1].argmax())): float(scores[i - 1].max())}
                         for i in range(1, len(ids))]
        offsets = list(range(len(ids)))  # one character a token
        logprobs = {"tokens": names + ["x"], "token_logprobs": values + [-1.0], "top_logprobs": tops + [{"x": -1.0}],
                    "text_offset": offsets + [len(prompt)]}
        return 200, json.dumps({"choices": [{"text": prompt + "x", "logprobs": logprobs, "finish_reason": "length"}]})

    with StubServer({**MODELS, ("POST", "/v1/completions"): completions}) as stub:
        yield stub


def _lls(cwd):
    folder = only_run_dir(cwd)
    return {json.loads(line)["sample_id"]: json.loads(line)["loglikelihood"]["loglikelihoods"]
            for line in (folder / "transcript.jsonl").read_text().splitlines()}


def test_served_log_likelihoods_equal_the_in_process_ones(echo_server, tmp_path):
    served, local = tmp_path / "served", tmp_path / "local"
    served.mkdir(), local.mkdir()
    result = run_pipeline([*COMMON, "backend=openai", f"backend.base_url=http://127.0.0.1:{echo_server.port}/v1",
                           f"runtime.model={MODEL}"], served)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads((only_run_dir(served) / "plan.json").read_text())
    assert any("returns the prompt's log-probabilities" in check for check in plan["checks"])
    assert run_pipeline(COMMON, local).returncode == 0
    theirs, ours = _lls(served), _lls(local)
    assert theirs.keys() == ours.keys() and len(ours) == 6
    for key in ours:
        assert theirs[key] == pytest.approx(ours[key], abs=1e-4)


def test_a_server_without_prompt_logprobs_is_refused_before_anything_runs(tmp_path):
    def generated_only(handler, body):  # echo ignored: log-probabilities of the generated token only
        logprobs = {"tokens": ["x"], "token_logprobs": [-0.5], "top_logprobs": [{"x": -0.5}], "text_offset": [0]}
        return 200, json.dumps({"choices": [{"text": "x", "logprobs": logprobs, "finish_reason": "length"}]})

    with StubServer({**MODELS, ("POST", "/v1/completions"): generated_only}) as stub:
        result = run_pipeline([*COMMON, "backend=openai", f"backend.base_url=http://127.0.0.1:{stub.port}/v1",
                               f"runtime.model={MODEL}"], tmp_path)
        posted = [seen for seen in stub.seen if seen[1].endswith("/completions")]
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "needs the prompt's log-probabilities" in errors[0]
    assert "generated token only" in errors[0]
    assert len(posted) == 1  # one probe, and no scoring request after it
    assert not list((tmp_path / "runs").glob("*/*/transcript.jsonl"))


def test_continuation_from_echoed_tokens_splits_as_in_process():
    from pipeline.backends.openai.answers import Logprobs
    from pipeline.backends.openai.loglikelihood import continuation

    # "Answer: yes" as a server tokenizes it: "Answer", ":", " yes", then the generated token
    logprobs = {"tokens": ["Answer", ":", " yes", "!"], "token_logprobs": [None, -1.0, -2.0, -0.5],
                "top_logprobs": [None, {":": -1.0}, {" no": -1.5}, {"!": -0.5}], "text_offset": [0, 6, 7, 11]}
    scored = continuation(Logprobs(**logprobs), context_chars=len("Answer:"), prompt_chars=len("Answer: yes"))
    assert (scored.loglikelihood, scored.tokens, scored.is_greedy, scored.merged) == (-2.0, 1, False, False)
    # "hel" + "lo" echoed as one token "hello" that starts in the context: counted with the continuation
    merged = {"tokens": ["say", " hello", "."], "token_logprobs": [None, -3.0, -0.1],
              "top_logprobs": [None, {" hello": -3.0}, {".": -0.1}], "text_offset": [0, 3, 9]}
    scored = continuation(Logprobs(**merged), context_chars=len("say hel"), prompt_chars=len("say hello"))
    assert (scored.loglikelihood, scored.tokens, scored.is_greedy, scored.merged) == (-3.0, 1, True, True)
