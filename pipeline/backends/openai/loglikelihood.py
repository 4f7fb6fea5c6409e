"""Log-likelihoods through an OpenAI-compatible server: POST /completions with `echo` and `logprobs`.

The prompt is the context and the continuation as one text; the server echoes the prompt's tokens
with their log-probabilities (`logprobs.tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)
and generates one token (max_tokens=1, as lm-eval's local-completions asks). The continuation's
log-likelihood is the sum over the echoed tokens that end after the context's end (the context's
trailing white space counts as the continuation's, as lm-eval splits it); a token that starts in
the context and ends in the continuation (a merged boundary) is counted with the continuation,
as the in-process backend scores it from the common prefix. is_greedy: each of those tokens is
its position's top log-probability.

`probe` asks once, at plan time, whether the server really returns prompt log-probabilities: some
return them only for the generated tokens (or ignore echo), and a multiple-choice run would then
score at chance without a word. The answers are read and checked by pipeline.backends.openai.answers:
one that is not what the API promises is that request's error, naming the server. Nothing here
renders chat templates: completions take raw text.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import httpx

from pipeline.backends.base import Continuation
from pipeline.backends.openai import answers
from pipeline.backends.openai import client as server
from pipeline.backends.openai.config import OpenAIConfig

PROBE_CONTEXT = "The capital of France is"
PROBE_CONTINUATION = " Paris"
ROUTE = "POST /completions"


class NoPromptLogprobs(Exception):
    """The server's answer has no log-probabilities for the prompt's tokens (why, in words)."""


def request_logprobs(client: httpx.Client, config: OpenAIConfig, model: str, prompt: str) -> answers.Logprobs:
    """The log-probabilities of a completion that echoes `prompt`; NoPromptLogprobs when there are none for the
    prompt, answers.BadAnswer (or ServerError) when the answer is not what the API promises."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    response = client.post(config.base_url.rstrip("/") + "/completions", json=body)
    if response.status_code != 200:
        raise NoPromptLogprobs(f"POST /completions answered {response.status_code} {response.reason_phrase}")
    logprobs = answers.echoed_logprobs(answers.json_body(response.text, response.headers.get("content-type")))
    echoed = [i for i, offset in enumerate(logprobs.text_offset) if offset < len(prompt)]
    if len(echoed) < 2 or all(logprobs.token_logprobs[i] is None for i in echoed):
        raise NoPromptLogprobs("it returned log-probabilities for the generated token only, not for the prompt's "
                               "(echo ignored)")
    return logprobs


def continuation(logprobs: answers.Logprobs, context_chars: int, prompt_chars: int) -> Continuation:
    """The continuation's log-likelihood from an echoed prompt's logprobs (see the module docstring)."""
    tokens, values, offsets, tops = logprobs.tokens, logprobs.token_logprobs, logprobs.text_offset, logprobs.top_logprobs
    picked = [i for i, (token, offset) in enumerate(zip(tokens, offsets))
              if offset < prompt_chars and offset + len(token) > context_chars]
    merged = bool(picked) and offsets[picked[0]] < context_chars
    total = sum(float(values[i]) for i in picked if values[i] is not None)
    greedy = all(tops[i] and max(tops[i], key=tops[i].get) == tokens[i] for i in picked)
    return Continuation(total, greedy, len(picked), merged)


def probe(config: OpenAIConfig, secrets: server.Secrets, model: str) -> Optional[str]:
    """None when the server returns prompt log-probabilities, else why not (one line)."""
    try:
        with server.http_client(config, secrets) as client:
            logprobs = request_logprobs(client, config, model, PROBE_CONTEXT + PROBE_CONTINUATION)
    except NoPromptLogprobs as error:
        return str(error)
    except answers.BadAnswer as error:
        return secrets.wipe(f"it answered {ROUTE} with {error}")
    except answers.ServerError as error:
        return secrets.wipe(f"it reported an error: {error}")
    except httpx.HTTPError as error:
        return secrets.wipe(str(error)) or type(error).__name__
    scored = continuation(logprobs, len(PROBE_CONTEXT), len(PROBE_CONTEXT + PROBE_CONTINUATION))
    return None if scored.tokens else "no echoed token covers the probe's continuation"


def score_all(config: OpenAIConfig, secrets: server.Secrets, model: str,
              jobs: list[tuple[str, str]]) -> list[Any]:
    """(context, continuation) -> Continuation, or the error message (a string, naming the server), max_concurrency
    at a time."""
    where = server.endpoint(config)
    with server.http_client(config, secrets) as client:
        def one(job: tuple[str, str]) -> Any:
            context, text = job
            spaces = len(context) - len(context.rstrip())
            try:
                logprobs = request_logprobs(client, config, model, context + text)
            except NoPromptLogprobs as error:
                return secrets.wipe(f"the server at {where}: {error}")
            except answers.BadAnswer as error:
                return secrets.wipe(error.at(where, ROUTE))
            except answers.ServerError as error:
                return secrets.wipe(error.at(where))
            except httpx.HTTPError as error:
                return secrets.wipe(str(error)) or type(error).__name__
            return continuation(logprobs, len(context) - spaces, len(context + text))

        with ThreadPoolExecutor(max_workers=config.max_concurrency) as pool:
            return list(pool.map(one, jobs))
