"""Settings of the OpenAI-compatible server backend (`backend=openai`), and their validation.

The API key is never a setting: `api_key_env` names the environment variable that holds it, so the
key cannot land in params, the run folder or MLflow. Every check fails with one `ConfigError` line
naming the key, the value (credentials masked) and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import urlsplit

from pipeline.core.errors import ConfigError
from pipeline.core.redact import hide_credentials

PREFIX = "backend"  # the config group these settings live in
TOKEN_LIMIT_PARAMS = ("max_tokens", "max_completion_tokens")  # older servers know only the first; OpenAI's o-series only the second
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


@dataclass
class OpenAIConfig:
    """Where the server is and how to talk to it."""

    base_url: str = "http://127.0.0.1:8000/v1"  # where /models and /chat/completions are served
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the key; unset: no key sent
    # Azure OpenAI's api-version: sent as a query parameter, the key as api-key, and chat requests go to
    # <base_url>/deployments/<runtime.model>/chat/completions (base_url https://NAME.openai.azure.com/openai)
    api_version: Optional[str] = None
    headers: dict[str, str] = field(default_factory=dict)  # extra HTTP headers; values are never logged
    token_limit_param: str = "max_tokens"  # or max_completion_tokens, as the server wants
    timeout_s: float = 60.0  # per attempt: reaching /models, and one request from sending to its last token
    max_concurrency: int = 8  # requests in flight at once
    max_retries: int = 3  # extra attempts for what can succeed on retry (connection errors, 408, 409, 429, 5xx)
    backoff_s: float = 0.5  # the first retry's wait; doubled each attempt, jittered, capped at max_backoff_s
    max_backoff_s: float = 60.0  # no wait is longer, Retry-After included
    tokenizer: Optional[str] = None  # a local model folder to count prompt tokens with when the server cannot
    modalities: tuple[str, ...] = ("text",)  # what the served model accepts; the server does not say

    def validate(self) -> "OpenAIConfig":
        """Self, or a ConfigError for the first setting outside what is allowed."""
        _check_url(self.base_url)
        if not isinstance(self.api_key_env, str) or not _ENV_NAME.match(self.api_key_env):
            # never echo it: a value that is not a variable name may be the key itself
            raise ConfigError(f"{PREFIX}.api_key_env", "<hidden>",
                              "the NAME of an environment variable holding the key (letters, digits, _), not the key")
        if self.api_version is not None and (not isinstance(self.api_version, str) or not self.api_version.strip()):
            raise ConfigError(f"{PREFIX}.api_version", self.api_version, "an api-version string such as 2024-10-21, or null")
        if not isinstance(self.headers, dict):
            raise ConfigError(f"{PREFIX}.headers", type(self.headers).__name__, "a map of header name to value")
        for name, value in self.headers.items():
            if not isinstance(name, str) or not _HEADER_NAME.match(name):
                raise ConfigError(f"{PREFIX}.headers", name, "header names of letters, digits and -")
            if not isinstance(value, str) or "\n" in value or "\r" in value:
                raise ConfigError(f"{PREFIX}.headers.{name}", "<hidden>", "a one-line string")
        if self.token_limit_param not in TOKEN_LIMIT_PARAMS:
            raise ConfigError(f"{PREFIX}.token_limit_param", self.token_limit_param, " or ".join(TOKEN_LIMIT_PARAMS))
        _check_number(f"{PREFIX}.timeout_s", self.timeout_s, minimum=0, strict=True)
        _check_int(f"{PREFIX}.max_concurrency", self.max_concurrency, minimum=1)
        _check_int(f"{PREFIX}.max_retries", self.max_retries, minimum=0)
        _check_number(f"{PREFIX}.backoff_s", self.backoff_s, minimum=0, strict=False)
        _check_number(f"{PREFIX}.max_backoff_s", self.max_backoff_s, minimum=0, strict=False)
        modalities = tuple(self.modalities)
        if not modalities or "text" not in modalities or not set(modalities) <= {"text", "image", "audio"}:
            raise ConfigError(f"{PREFIX}.modalities", list(modalities), "a list of text, image, audio that includes text")
        self.modalities = modalities
        return self


def _check_url(url: object) -> None:
    allowed = "an http:// or https:// URL of the server's API, such as http://127.0.0.1:8000/v1"
    if not isinstance(url, str):
        raise ConfigError(f"{PREFIX}.base_url", url, allowed)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"{PREFIX}.base_url", hide_credentials(url), allowed) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or (port is not None and not 0 < port < 65536):
        raise ConfigError(f"{PREFIX}.base_url", hide_credentials(url), allowed)
    if parts.query or parts.fragment:
        raise ConfigError(f"{PREFIX}.base_url", hide_credentials(url), allowed + " without ?query or #fragment")


def _check_int(key: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, f"a whole number >= {minimum}")


def _check_number(key: str, value: object, minimum: float, strict: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value and value != float("inf")
    if not ok or (value <= minimum if strict else value < minimum):
        raise ConfigError(key, value, f"a number {'>' if strict else '>='} {minimum:g} (seconds)")
