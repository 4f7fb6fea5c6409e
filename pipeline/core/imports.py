"""Finding a user's function by its dotted path (a tool, a scorer), with one readable line for each way it
can fail. Importing the function is all it does: what the function must accept is its caller's to check."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from pipeline.core.errors import UserError


def import_function(target: str, where: str) -> Callable[..., Any]:
    """The function at a dotted path: the longest importable module prefix, then attributes (Class.method too).

    Tools and user scorers (dataset.scorer._target_) are loaded with it; `where` names the setting."""
    parts = target.split(".")
    if len(parts) < 2 or not all(parts):
        raise UserError(f"{where}={target}: give a dotted path such as mypackage.tools.search")
    value: Any = None
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            value = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and not module_name.startswith(error.name):
                raise UserError(f"{where}={target}: importing {module_name} failed: {error}") from None
            continue  # a shorter prefix may be the module
        except Exception as error:  # the module exists but raises on import
            raise UserError(f"{where}={target}: importing {module_name} failed: {type(error).__name__}: "
                            f"{error}") from None
        for part in parts[split:]:
            if not hasattr(value, part):
                raise UserError(f"{where}={target}: {'.'.join(parts[:split])} has no attribute "
                                f"{'.'.join(parts[split:])!r}")
            value = getattr(value, part)
        break
    else:
        raise UserError(f"{where}={target}: cannot import {parts[0]}; the module must be importable from the "
                        "launch folder or an installed package")
    if not callable(value) or isinstance(value, type):
        raise UserError(f"{where}={target}: not a function")
    return value
