"""Keep secrets out of everything that leaves the process: MLflow params, tags, artifacts, config.json,
and Hydra's own copies of the command line and config in the run folder (`.hydra/`, `multirun.yaml`).

Three kinds of secret are recognised: a value under a key named like a credential (`api_key`,
`hf_token`, `password`, …), every value of an HTTP `headers` map (`backend.headers.Authorization`,
`X-Api-Token`: a header carries credentials whatever its name) and the `user:password@` part of a
URL. Generation settings that only look similar (`max_new_tokens`, `eos_token`) are not secrets
and stay readable; a header's name is kept, only its value is masked.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from pipeline.core.files import write_text_atomically

MASK = "***"
HEADERS = "headers"  # a map of HTTP headers: each value is masked, the names stay
_SECRET_NAME = re.compile(r"(^|_)(api_?key|secret|secret_key|password|passwd|credentials?|token)$", re.IGNORECASE)
_TOKEN_NOT_SECRET = re.compile(r"^(eos|bos|pad|unk|sep|cls|mask|stop|start|end)_token$", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")
# `name: value`, `name=value`, `'name': 'value'` anywhere in a text: inline maps in overrides
# (session.tools=[{_target_: x, api_key: ...}]) and the repr of a list of dicts in a param
_INLINE_PAIR = re.compile(r"""(?P<quote>['"]?)(?P<name>[A-Za-z_][\w.]*)(?P=quote)(?P<sep>\s*[:=]\s*)"""
                          r"""(?P<value>"[^"]*"|'[^']*'|[^\s,}\]]+)""")


def is_secret_key(key: str) -> bool:
    """Whether a (dotted, possibly `+`-prefixed) config key holds a credential: a credential's name,
    a header (`backend.headers.Authorization`), or a whole headers map (`backend.headers={...}`)."""
    parts = key.lstrip("+~").split(".")
    if any(part.lower() == HEADERS for part in parts):
        return True
    name = parts[-1]
    return bool(_SECRET_NAME.search(name)) and not _TOKEN_NOT_SECRET.match(name)


def hide_credentials(text: str) -> str:
    """`scheme://user:password@host` -> `scheme://***@host`, wherever it appears in the text."""
    return _URL_CREDENTIALS.sub(r"\1" + MASK + "@", text)


def redact_override(override: str) -> str:
    """A command-line override `key=value` with the value masked when it is a secret."""
    key, sep, _ = override.partition("=")
    return f"{key}={MASK}" if sep and is_secret_key(key) else hide_credentials(override)


def redact_overrides(text: str) -> str:
    """A one-line value (a param, a tag, a run name) with its `key=value` words, the secret pairs
    written inside values, and URL credentials masked."""
    words, masking = [], False
    for part in text.split(" "):
        if masking and not _starts_override(part):
            continue  # a secret's value holds spaces ("Bearer sk-..."): its other words are the secret too
        words.append(redact_override(part))
        masking = words[-1] != part and words[-1].endswith("=" + MASK)
    return _INLINE_PAIR.sub(_mask_pair, " ".join(words))


def _starts_override(word: str) -> bool:
    """Whether a word of a space-joined command line starts the next override (`generation.seed=3`,
    `backend=openai`, `-m`), rather than continuing a value: its key begins with a top-level name."""
    if word.startswith("-"):
        return True
    key = _OVERRIDE_KEY.match(word)
    return bool(key) and key["top"] in _top_level_names()


_OVERRIDE_KEY = re.compile(r"^[+~]{0,2}(?P<top>[A-Za-z_]\w*)(?:[.=@\[]|$)")


@functools.lru_cache(maxsize=1)
def _top_level_names() -> frozenset[str]:
    """The config's sections and groups (runtime, backend, experiment, ...) and hydra."""
    from pipeline.core.config import CONF_DIR, Config

    groups = {path.name for path in CONF_DIR.iterdir() if path.is_dir()} if CONF_DIR.is_dir() else set()
    return frozenset(set(Config.__dataclass_fields__) | groups | {"hydra"})


def _mask_pair(match: re.Match) -> str:
    if not is_secret_key(match["name"]):
        return match[0]
    quote = match["value"][0] if match["value"][0] in "'\"" else ""
    return f"{match['quote']}{match['name']}{match['quote']}{match['sep']}{quote}{MASK}{quote}"


def redact(value: Any, key: str = "") -> Any:
    """A copy of a JSON/YAML-like structure with secret values masked."""
    if key.lower() == HEADERS and isinstance(value, dict):
        return {name: MASK if header is not None else None for name, header in value.items()}
    if key and is_secret_key(key) and value is not None:
        return MASK
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_overrides(value)
    return value


def redacted_text(path: Path) -> str:
    """The file's text with secrets masked: parsed for YAML and JSON, URL credentials for the rest."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_dump(redact(yaml.safe_load(text)), sort_keys=False, allow_unicode=True)
        if path.suffix == ".json":
            return json.dumps(redact(json.loads(text)), indent=2, ensure_ascii=False) + "\n"
    except (yaml.YAMLError, json.JSONDecodeError):
        pass  # not parseable (e.g. cut short by a crash): mask what can be found in the text
    return hide_credentials(text)


def mask_secrets_in_files(paths: Iterable[Path]) -> None:
    """Rewrite each YAML file that holds a secret with it masked; files without one stay as they are.

    Hydra copies the command line and the composed config into the run folder (`.hydra/`, a sweep's
    `multirun.yaml`) before our code runs; this is called first thing in each job so that a password
    in `tracking.uri` or a tool's `api_key` is not kept on disk. A resume that would replay a masked
    value asks for it again (pipeline.run.resume)."""
    for path in paths:
        if not path.is_file():
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # not Hydra's YAML: nothing of ours to mask
        masked = redact(data)
        if masked != data:
            write_text_atomically(path, yaml.safe_dump(masked, sort_keys=False, allow_unicode=True))
