"""Talking to an OpenAI-compatible server outside generation: the model list, token counts, and what
may be retried.

Planning is synchronous and uses httpx (a dependency of the `openai` client) directly, because the
answers it must tell apart (connection refused, an HTML page, 401, a model list without our model)
are clearer at the HTTP level than through the client's exceptions. Every failure becomes one
`UserError` line that names the server with its credentials masked; the key and the extra headers'
values are wiped from any text the server sends back before it reaches a message.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

import httpx

from pipeline.backends.openai import answers
from pipeline.backends.openai.config import PREFIX, OpenAIConfig
from pipeline.core.errors import UserError
from pipeline.core.redact import MASK, hide_credentials

RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx: the server may answer next time
# Where servers put the context length in a /models entry: vLLM and SGLang (max_model_len),
# OpenRouter and LiteLLM proxies (context_length), LM Studio (max_context_length)
CONTEXT_KEYS = ("max_model_len", "context_length", "max_context_length", "context_window")


@dataclass
class Served:
    """What GET /models said: the served ids and our model's entry."""

    ids: list[str]
    entry: dict[str, Any]  # our model's entry as the server wrote it

    @property
    def context_length(self) -> Optional[int]:
        for key in CONTEXT_KEYS:
            value = self.entry.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None


class Secrets:
    """The key and header values of one backend: sent to the server, wiped from everything else."""

    def __init__(self, config: OpenAIConfig) -> None:
        self.env = config.api_key_env
        self.key = os.environ.get(config.api_key_env) or None
        self._values = [v for v in [self.key, *config.headers.values()] if v and len(v) >= 4]

    def wipe(self, text: str) -> str:
        """`text` with the key, header values and URL credentials masked, on one line."""
        for value in self._values:
            text = text.replace(value, MASK)
        return " ".join(hide_credentials(text).split())


def auth_headers(config: OpenAIConfig, secrets: Secrets) -> dict[str, str]:
    """The headers every request carries: the key (Bearer, or Azure's api-key) and the extra headers."""
    headers = dict(config.headers)
    if secrets.key:
        if config.api_version:
            headers.setdefault("api-key", secrets.key)
        else:
            headers.setdefault("Authorization", f"Bearer {secrets.key}")
    return headers


def endpoint(config: OpenAIConfig) -> str:
    """The base URL as records show it: credentials masked, no trailing slash."""
    return hide_credentials(config.base_url.rstrip("/"))


def server_root(base_url: str) -> str:
    """The server's root, where vLLM and SGLang serve /tokenize: the base URL without its /v1."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def http_client(config: OpenAIConfig, secrets: Secrets) -> httpx.Client:
    params = {"api-version": config.api_version} if config.api_version else None
    return httpx.Client(headers=auth_headers(config, secrets), params=params, timeout=config.timeout_s,
                        follow_redirects=True, trust_env=False)


def list_models(config: OpenAIConfig, secrets: Secrets, model: str) -> Served:
    """GET /models, checked: reachable, OpenAI-shaped, credentials accepted, `model` served.

    With an api_version (Azure style) `model` is a deployment name, which Azure's /models does not
    list: a missing one is left to the plan's warnings and the first request."""
    where = endpoint(config)
    url = config.base_url.rstrip("/") + "/models"
    try:
        with http_client(config, secrets) as client:
            response = client.get(url)
    except httpx.TimeoutException:
        raise UserError(f"the server at {where} did not answer GET /models within {PREFIX}.timeout_s="
                        f"{config.timeout_s:g}s") from None
    except httpx.HTTPError as error:
        reason = secrets.wipe(str(error)) or type(error).__name__
        raise UserError(f"cannot reach the server at {where} ({PREFIX}.base_url): {reason}; is it running?") from None
    if response.status_code in (401, 403):
        if not secrets.key:
            raise UserError(f"the server at {where} wants an API key ({response.status_code}) and the environment "
                            f"variable {secrets.env} ({PREFIX}.api_key_env) is unset")
        raise UserError(f"the server at {where} refused the API key in {secrets.env} "
                        f"({response.status_code} {response.reason_phrase})")
    if response.status_code == 404:
        raise UserError(f"the server at {where} has no /models (404): {PREFIX}.base_url should be the API's base, "
                        "usually ending in /v1")
    if response.status_code != 200:
        raise UserError(f"the server at {where} answered GET /models with {response.status_code} "
                        f"{response.reason_phrase}: {_excerpt(response, secrets)}")
    try:
        entries = answers.model_list(answers.json_body(response.text, response.headers.get("content-type")))
    except answers.BadAnswer:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        raise UserError(f"the server at {where} is not OpenAI-compatible: GET /models answered {kind}, "
                        f"not a model list ({_excerpt(response, secrets)})")
    ids = [entry["id"] for entry in entries]
    if model not in ids and config.api_version:
        return Served(ids=ids, entry={})  # Azure lists base models, not deployments: the plan warns instead
    if model not in ids:
        served = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "") or "no model"
        raise UserError(f"runtime.model={model!r} is not served by {where}: it serves {served}")
    return Served(ids=ids, entry=dict(entries[ids.index(model)]))


def tokenize(client: httpx.Client, config: OpenAIConfig, model: str, messages: list[dict]) -> Optional[int]:
    """Prompt tokens through the server's /tokenize (vLLM, SGLang), or None when it has none."""
    body = {"model": model, "messages": messages, "add_generation_prompt": True}
    try:
        response = client.post(server_root(config.base_url) + "/tokenize", json=body)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return answers.token_count(answers.json_body(response.text, response.headers.get("content-type")))
    except answers.BadAnswer:  # not vLLM's or SGLang's /tokenize: counted another way
        return None


def retry_after_s(headers: Any) -> Optional[float]:
    """Retry-After in seconds (a number of seconds or an HTTP date), or None when absent or unreadable."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(config: OpenAIConfig, attempt: int, retry_after: Optional[float]) -> float:
    """The wait before retry `attempt` (0 for the first): exponential with jitter, at least Retry-After.

    Jitter spreads the retries of requests that failed together (a 429 burst) so they do not come back
    together; Retry-After is the server's own word and is honoured, capped at max_backoff_s."""
    wait = config.backoff_s * (2 ** attempt) * random.uniform(0.5, 1.5)
    if retry_after is not None:
        wait = max(wait, retry_after + random.uniform(0, 0.1 * config.backoff_s))
    return min(wait, config.max_backoff_s)


def _excerpt(response: httpx.Response, secrets: Secrets, limit: int = 120) -> str:
    text = secrets.wipe(response.text or "")
    return (text[:limit] + "...") if len(text) > limit else (text or "empty body")
