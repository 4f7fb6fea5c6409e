"""Tools a model may call: Python callables named in config, their JSON schemas, and running them.

`session.tools` lists `{_target_: dotted.path.to.function, key: value ...}`; the other keys are
bound as keyword arguments (an index path, an API base URL) and hidden from the model. The
schema the chat template receives is derived from the signature and the docstring, in the
OpenAI function format that transformers' `get_json_schema` writes: the docstring's text before
its first section is the description, its Google-style `Args:` section describes the parameters
(a trailing `(choices: [...])` becomes an enum), type hints give JSON types, parameters without
a default are required.

`call_tool` checks the arguments against the schema's top-level types (a model writing "4821"
for an integer is told so, rather than the tool getting a string) and runs the call with a time
limit. A tool runs in a daemon thread: Python cannot stop a thread, so a tool that overruns is
abandoned (its result ignored) rather than killed, and it ends with the process at the latest.

Nothing here generates text or parses model output (that is pipeline.core.tool_calls).
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import threading
import time
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pipeline.core.errors import UserError
from pipeline.core.imports import import_function

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
# Google-style docstring sections, read the way transformers' get_json_schema reads them
_DESCRIPTION = re.compile(r"^(.*?)[\n\s]*(Args:|Returns:|Raises:|\Z)", re.DOTALL)
_ARGS = re.compile(r"\n\s*Args:\n(.*?)[\n\s]*(Returns:|Raises:|\Z)", re.DOTALL)
_ARG = re.compile(r"(?:^|\n)([ \t]*)(\w+):\s*(.*?)\s*(?=\n(?!\1[ \t])[ \t]*\w+:|\Z)", re.DOTALL)
_RETURNS = re.compile(r"\n\s*Returns:\n\s*(.*?)[\n\s]*(Raises:|\Z)", re.DOTALL)
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Tool:
    """A callable the model may ask for, and the schema it is shown."""

    name: str
    function: Callable[..., Any]  # with config-bound keyword arguments already applied
    schema: dict[str, Any]  # {"type": "function", "function": {name, description, parameters}}


@dataclass(frozen=True)
class ToolOutcome:
    """What one call gave: the text the model is shown next, and whether the tool succeeded."""

    ok: bool
    text: str
    seconds: float


def load_tools(specs: list[dict[str, Any]]) -> list[Tool]:
    """Import each `_target_`, bind its other keys, derive its schema; a UserError names a bad entry."""
    tools: list[Tool] = []
    for index, spec in enumerate(specs):
        where = f"session.tools[{index}]"
        target = spec["_target_"]
        function = import_function(target, f"{where}._target_")
        bound = {key: value for key, value in spec.items() if key != "_target_"}
        parameters = inspect.signature(function).parameters
        for key in bound:
            if key not in parameters:
                raise UserError(f"{where}.{key}: {target} has no parameter {key!r}; "
                                f"its parameters: {', '.join(parameters) or 'none'}")
        schema = tool_schema(function, hidden=set(bound), where=where)
        name = schema["function"]["name"]
        if any(tool.name == name for tool in tools):
            raise UserError(f"{where}._target_={target}: a second tool named {name!r}; tool names must differ")
        tools.append(Tool(name, functools.partial(function, **bound) if bound else function, schema))
    return tools


def tool_schema(function: Callable[..., Any], hidden: set[str] = frozenset(), where: str = "tool") -> dict[str, Any]:
    """The JSON schema of a function from its signature and docstring (parameters in `hidden` left out).

    The same schema transformers' `get_json_schema` gives (the tests compare them), without importing
    transformers, which the plan stage avoids; unlike it, a parameter may go undescribed."""
    name = function.__name__
    description, documented, returns = _parse_docstring((inspect.getdoc(function) or "").strip())
    try:
        hints = typing.get_type_hints(function)
    except Exception as error:  # a hint naming something undefined
        raise UserError(f"{where}: cannot read the type hints of {name}: {error}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name in hidden:
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise UserError(f"{where}: {name} takes *{parameter.name}; a tool needs named parameters only")
        if parameter.name not in hints:
            raise UserError(f"{where}: parameter {parameter.name!r} of {name} has no type hint; annotate it "
                            "(int, float, str, bool, list[...], dict[str, ...], Literal[...], Optional[...])")
        prop = _json_type(hints[parameter.name], f"{where}: parameter {parameter.name!r} of {name}")
        text = documented.get(parameter.name)
        if text is not None:
            if choices := _CHOICES.search(text):
                prop["enum"] = json.loads(choices.group(1))
                text = text[:choices.start()].strip()
            prop["description"] = text
        properties[parameter.name] = prop
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    schema: dict[str, Any] = {"name": name, "description": description, "parameters": parameters}
    if "return" in hints:
        try:
            schema["return"] = _json_type(hints["return"], "")
        except UserError:
            pass  # the model never writes the return value: an unusual return type is no reason to refuse a tool
        else:
            if returns is not None:
                schema["return"]["description"] = returns
    return {"type": "function", "function": schema}


def _parse_docstring(doc: str) -> tuple[str, dict[str, str], Optional[str]]:
    """(the text before the first section, parameter -> description from Args:, the Returns: text)."""
    description = _DESCRIPTION.search(doc)
    arguments = _ARGS.search(doc)
    returns = _RETURNS.search(doc)
    documented: dict[str, str] = {}
    if arguments:
        block = "\n".join(line for line in arguments.group(1).split("\n") if line.strip())
        documented = {name: re.sub(r"\s*\n+\s*", " ", text.strip()) for _, name, text in _ARG.findall(block)}
    return (description.group(1).strip() if description else "", documented,
            returns.group(1).strip() if returns else None)


def _json_type(hint: Any, where: str) -> dict[str, Any]:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if hint is Any:
        return {}
    if origin is typing.Literal:
        return {"type": _JSON_TYPES.get(type(arguments[0]), "string"), "enum": list(arguments)}
    if origin in (typing.Union, types.UnionType):
        members = [_json_type(a, where) for a in arguments if a is not type(None)]
        schema = members[0] if len(members) == 1 else {"type": [m.get("type") for m in members]}
        if type(None) in arguments:
            schema = {**schema, "nullable": True}
        return schema
    if hint is list or origin is list:
        return {"type": "array", **({"items": _json_type(arguments[0], where)} if arguments else {})}
    if hint is tuple or origin is tuple:
        return {"type": "array"}
    if hint is dict or origin is dict:
        return {"type": "object", **({"additionalProperties": _json_type(arguments[1], where)} if arguments else {})}
    raise UserError(f"{where}: type {hint!r} has no JSON equivalent; use int, float, str, bool, list, dict, "
                    "Literal or Optional")


def call_tool(tool: Tool, arguments: dict[str, Any], timeout_s: float) -> ToolOutcome:
    """Run one call; a failure, wrong arguments or an overrun come back as text for the model (ok False)."""
    started = time.perf_counter()
    try:
        inspect.signature(tool.function).bind(**arguments)
    except TypeError as error:
        return ToolOutcome(False, f"wrong arguments for {tool.name}: {error}", 0.0)
    properties = tool.schema["function"]["parameters"]["properties"]
    for name, value in arguments.items():
        problem = _type_problem(properties.get(name, {}), value)
        if problem:
            return ToolOutcome(False, f"wrong arguments for {tool.name}: {name} must be {problem}, got {value!r}", 0.0)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = tool.function(**arguments)
        except Exception as error:  # whatever the tool raises is reported to the model, not to us
            box["error"] = f"{type(error).__name__}: {error}"

    worker = threading.Thread(target=run, name=f"tool-{tool.name}", daemon=True)
    worker.start()
    worker.join(max(timeout_s, 0.0))
    seconds = time.perf_counter() - started
    if worker.is_alive():
        return ToolOutcome(False, f"{tool.name} did not finish within {timeout_s:.3g} s", seconds)
    if "error" in box:
        return ToolOutcome(False, f"{tool.name} failed: {box['error']}", seconds)
    return ToolOutcome(True, result_text(box.get("value")), seconds)


_PYTHON_TYPES: dict[str, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _type_problem(schema: dict[str, Any], value: Any) -> Optional[str]:
    """What a value should have been under its parameter's schema (top level only), or None when it fits."""
    if value is None and schema.get("nullable"):
        return None
    if "enum" in schema and value not in schema["enum"]:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    expected = schema.get("type")
    kinds = expected if isinstance(expected, list) else [expected] if expected else []
    if kinds and not any(_PYTHON_TYPES.get(kind, lambda v: True)(value) for kind in kinds):
        return " or ".join(f"a JSON {kind}" for kind in kinds)
    return None


def result_text(value: Any) -> str:
    """A tool's return value as the model reads it: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
