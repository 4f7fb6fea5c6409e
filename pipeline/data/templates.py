"""Jinja templates over a dataset record's fields (dataset.template.prompt / .reference).

Rendered in Jinja's sandbox with strict undefined names, so a template that names a field the record
lacks is a mistake reported with the record's place, not an empty string. Compiling is separate
from rendering so a template's syntax is refused once, before any record is read.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

from pipeline.core.errors import UserError


@lru_cache(maxsize=None)
def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


def compile_template(source: Optional[str], key: str) -> Optional[Any]:
    """The compiled template, None for none; a UserError naming `key` for one that does not parse."""
    if source is None:
        return None
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as error:
        raise UserError(f"{key}={source!r}: not a valid Jinja template: {error.message} (line {error.lineno})") from None


def render_template(template: Any, record: dict[str, Any], key: str, where: str) -> str:
    """The template rendered over the record's fields; a UserError with `where` for a missing field or a failure."""
    from jinja2 import UndefinedError

    try:
        return template.render(**record)
    except UndefinedError as error:
        raise UserError(f"{where}: {key}: {error.message}; the record has {', '.join(map(str, record)) or 'no fields'}") \
            from None
    except Exception as error:  # a filter on the wrong type, a division by zero: the template's, in one line
        raise UserError(f"{where}: {key} failed: {type(error).__name__}: {error}") from None
