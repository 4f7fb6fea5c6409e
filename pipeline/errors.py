"""User-facing errors: mistakes a user can fix, shown as one line with a distinct exit code.

A `UserError` is never a bug: the entry point prints its message without a traceback and exits
with `EXIT_USAGE`. Anything else that escapes a stage is a failure of the run (`EXIT_FAILURE`).
`describe_config_exception` turns Hydra's and OmegaConf's multi-line composition errors into the
same one-line form.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class UserError(Exception):
    """A mistake in the config, the command line or the input files."""

    exit_code = EXIT_USAGE


class LoadError(Exception):
    """The model could not be loaded from files that looked fine when planned (a failure, not a mistake)."""


class ToolFailure(Exception):
    """A tool call failed and execute.fail_fast=true asked to stop there (a failure of the run, not a mistake)."""


class StorageError(Exception):
    """A run-folder write failed (a full disk): what was written before is kept (a failure, not a mistake)."""


class TrackingError(Exception):
    """The MLflow store could not be reached or refused a write, and tracking.required=true (a failure)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the run ends as Ctrl-C ends it (with its own exit code)."""

    exit_code = EXIT_TERMINATED


class ConfigError(UserError):
    """A setting outside what is allowed: names the full key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: expected {allowed}")


def describe_config_exception(exc: BaseException) -> str:
    """One readable line for an error raised while composing or converting the config."""
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in chain:
        if isinstance(error, ConfigError):
            return str(error)
    for error in chain:
        if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
            key = error.full_key
            if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
                allowed = _allowed_keys(error)
                if allowed:
                    return f"{key}: unknown key; allowed keys here: {allowed}"
                return f"{key}: unknown key; to add a new key write +{key}=..."
            if isinstance(error, MissingMandatoryValue):
                return f"{key}: a value is required (set {key}=...)"
            if isinstance(error, InterpolationResolutionError):
                return f"{key}: cannot resolve interpolation: {_first_line(error.msg)}"
            if isinstance(error, ValidationError):
                return f"{key}: {_first_line(error.msg)}"
            return f"{key}: {_first_line(error.msg)}"
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _allowed_keys(error: Any) -> str:
    object_type = getattr(error, "object_type", None)
    fields = getattr(object_type, "__dataclass_fields__", None)
    return ", ".join(fields) if fields else ""


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""
