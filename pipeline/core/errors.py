"""User-facing errors: mistakes a user can fix, shown as one line with a distinct exit code.

A `UserError` is never a bug: the entry point prints its message without a traceback and exits
with `EXIT_USAGE`. Anything else that escapes a stage is a failure of the run (`EXIT_FAILURE`).
`describe_config_exception` turns Hydra's and OmegaConf's multi-line composition errors into the
same one-line form, in our words: a wrong type names the key, the value and the type the schema
wants (pipeline.core.config.expected_value), a mistyped group or option lists what exists.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Optional

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


class RequestFailure(Exception):
    """A request the backend could not answer, and execute.fail_fast=true asked to stop there (a failure)."""


class BackendUnavailable(Exception):
    """The backend stopped answering altogether (a server that no longer accepts connections, after the
    retries): the run stops and keeps what it wrote, so that a resume finishes it once the backend is back.
    Not a request's failure (that is an error record), and not a mistake (a failure of the run)."""


class StorageError(Exception):
    """A run-folder write failed (a full disk): what was written before is kept (a failure, not a mistake)."""


class TrackingError(Exception):
    """The MLflow store could not be reached or refused a write, and tracking.required=true (a failure)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the run ends as Ctrl-C ends it (with its own exit code)."""

    exit_code = EXIT_TERMINATED


_SIGNALLED: list[KeyboardInterrupt] = []  # the interruptions the signal handlers raised in this process


def signalled(interruption: KeyboardInterrupt) -> KeyboardInterrupt:
    """What a signal handler raises, remembered: see interruption_behind."""
    _SIGNALLED.append(interruption)
    return interruption


def interruption_behind(error: BaseException) -> BaseException:
    """`error`, or the Ctrl-C/SIGTERM it stands for. A signal can land inside a library's import or an
    `except Exception` of its own, which turns our KeyboardInterrupt into something else (transformers'
    lazy modules raise ModuleNotFoundError, numpy a RecursionError): once a signal was raised, whatever
    ends the run is that interruption, not a failure."""
    if isinstance(error, KeyboardInterrupt) or not _SIGNALLED:
        return error
    return _SIGNALLED[-1]


def forget_signals() -> None:
    """A command begins: what interrupted an earlier one in this process (a test calling main) is not its own."""
    _SIGNALLED.clear()


def reraise_interruption(error: BaseException) -> None:
    """Raise the Ctrl-C/SIGTERM that `error` stands for (interruption_behind), if it stands for one."""
    cause = interruption_behind(error)
    if cause is not error:
        raise cause from error


def quiet_swallowed_signals(unraisable: Any) -> None:
    """sys.unraisablehook: an interruption of ours that landed where Python cannot raise it (a weakref callback,
    a __del__, a garbage collection) is not printed as "Exception ignored ... Traceback"; raise_if_signalled
    raises it as the stage ends. Anything else goes to Python's own hook."""
    if any(unraisable.exc_value is interruption for interruption in _SIGNALLED):
        return
    sys.__unraisablehook__(unraisable)


def raise_if_signalled() -> None:
    """Raise the Ctrl-C/SIGTERM a library swallowed (one that catches BaseException around its imports),
    so that a signal is never lost: called as each stage ends."""
    if _SIGNALLED:
        raise _SIGNALLED[-1]


class ConfigError(UserError):
    """A setting outside what is allowed: names the full key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: expected {allowed}")


def describe_config_exception(exc: BaseException) -> str:
    """One readable line for an error raised while composing or converting the config, in our words:
    the key, the value and what is allowed, never the library's types or its config search path."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        ConfigTypeError,
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
        if isinstance(error, MissingConfigException) and error.missing_cfg_file:
            return _missing_option(error.missing_cfg_file, error.options)
    for error in chain:
        if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
            key = error.full_key
            if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
                return _unknown_key(key, error)
            if isinstance(error, MissingMandatoryValue):
                return f"{key}: a value is required (set {key}=...)"
            if isinstance(error, InterpolationResolutionError):
                return f"{key}: cannot resolve interpolation: {first_line(error.msg)}"
            if isinstance(error, (ValidationError, ConfigTypeError)):
                wrong_type = _wrong_type(key, error, chain)
                if wrong_type:
                    return wrong_type
            return f"{key}: {first_line(error.msg)}"
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    exists = re.match(r"Could not append to config\. An item is already at '([^']+)'", text)
    if exists:  # +key=value on a key the config has
        return f"+{exists.group(1)}: the key exists, so drop the +: {exists.group(1)}=..."
    return text


def _missing_option(missing: str, options: Any) -> str:
    """`generation=samplng`: Hydra says it could not find generation/samplng in its search path."""
    group, _, option = missing.rpartition("/")
    if not group:
        return f"{missing}: no such config"
    available = [str(o) for o in options or []]
    return (f"{group}={option}: no such option{_did_you_mean(option, available)}; "
            f"available: {', '.join(available) or 'none'}")


def _unknown_key(key: str, error: Any) -> str:
    if "." not in key and "[" not in key:  # at the top: a mistyped group (generaton=sampling) or key
        from pipeline.core.config import CONF_DIR

        keys = _allowed_keys(error) or []
        folders = CONF_DIR.iterdir() if CONF_DIR.is_dir() else ()
        groups = sorted(p.name for p in folders if p.is_dir() and p.name != "hydra")
        names = sorted(set(keys) | set(groups))
        shown = [name if name in keys else f"+{name}" for name in names]  # groups outside the defaults list take +
        return f"{key}: no such config group or key{_did_you_mean(key, names)}; available: {', '.join(shown)}"
    allowed = _allowed_keys(error)
    leaf = key.rsplit(".", 1)[-1]
    if allowed:
        parent = key[:-len(leaf)]
        return (f"{key}: unknown key{_did_you_mean(leaf, allowed, parent)}; "
                f"allowed keys here: {', '.join(allowed)}")
    return f"{key}: unknown key; to add a new key write +{key}=..."


def _wrong_type(key: str, error: Any, chain: list[BaseException]) -> str | None:
    """`generation.stop='END' is not allowed: expected a list of strings, ...` from the schema's types."""
    from pipeline.core.config import expected_value

    value, shown = getattr(error, "value", None), None
    if value is None and "Optional" not in str(getattr(error, "msg", "")):
        shown = _override_value(key, chain)  # a failed merge keeps no value: take the override as typed
        if shown is None:
            return None
    expected = expected_value(key, value)
    if expected is None:
        return None
    return f"{key}={shown if shown is not None else _show(value)} is not allowed: expected {expected}"


def _override_value(key: str, chain: list[BaseException]) -> str | None:
    prefix = f"Error merging override {key}="
    for error in chain:
        text = first_line(str(error))
        if text.startswith(prefix):
            return text[len(prefix):]
    return None


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _did_you_mean(name: str, candidates: list[str], prefix: str = "") -> str:
    import difflib

    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _allowed_keys(error: Any) -> list[str]:
    object_type = getattr(error, "object_type", None)
    fields = getattr(object_type, "__dataclass_fields__", None)
    return list(fields) if fields else []


def first_line(error: object, limit: int = 300) -> str:
    """An error's (or a text's) first line of substance: what a one-line message quotes of it.
    SQLAlchemy's preamble about how an error was raised is not its message; an error without a
    message is named by its type."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith("(raised as a result of")]
    if lines:
        return lines[0][:limit]
    return type(error).__name__ if isinstance(error, BaseException) else ""


def one_line(value: object, limit: Optional[int] = None) -> str:
    """All of a text on one line (whitespace runs collapsed), cut to `limit` characters with an ellipsis."""
    text = " ".join(str(value).split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
