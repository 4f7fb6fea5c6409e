"""Render a model folder's chat template and count prompt tokens without importing transformers or torch.

The plan stage counts prompt tokens before any weight loads and must stay fast; importing
transformers alone costs seconds, jinja2 and tokenizers tens of milliseconds. `ChatTemplate`
renders the template the way transformers 5's `apply_chat_template(..., tokenize=False)` does
(same template lookup, same sandboxed jinja environment, same variables); `TokenCounter` counts
tokens the way the tokenizer from `pipeline.backends.transformers.load.load_tokenizer` does, straight from
`tokenizer.json` with the `tokenizers` library. Execute renders with the same `ChatTemplate`, so
plan and execute see the same prompt text by construction.

Where this can differ from transformers (the tests pin the rest):
- A folder whose only template is `chat_template.json` renders here; transformers' tokenizer
  reads that file only through a processor (AutoProcessor), never through AutoTokenizer.
- Tokenizer classes with their own constructor (`tokenizer_class` such as LlamaTokenizer or
  Qwen2Tokenizer) rebuild the backend in transformers from the vocabulary with class-made
  normalizer and pre-tokenizer, and may default special tokens the files do not name (Qwen2's
  eos/pad/unk `<|endoftext|>`). Here the files are taken as written: `TokenCounter.exact` is False
  for such folders, and a template reading a class-default token finds it undefined. Folders whose
  `tokenizer_class` is TokenizersBackend or PreTrainedTokenizerFast (or that have no
  `tokenizer.json`, read through transformers itself) match.
- `load_tokenizer` sets a missing pad_token to the eos_token after loading; templates here see
  only the files' pad_token.
- Not supported: tools given as Python functions (give JSON schemas), `continue_final_message`,
  `fast_tokenizer_files` in tokenizer_config.json, the Mistral regex patch, remote code.

Does not decide whether a session uses the template (that is pipeline.data.prompts), and does not
load weights or build input tensors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.core.errors import UserError, one_line
from pipeline.core.text_files import read_json, read_text

TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
LEGACY_TEMPLATE_FILE = "chat_template.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
TOKENIZER_FILE = "tokenizer.json"

# transformers' PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES: the named tokens templates see
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_class values AutoTokenizer loads as a plain TokenizersBackend over tokenizer.json as written
GENERIC_TOKENIZER_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast", "PreTrainedTokenizer",
                                       "BloomTokenizer", "BloomTokenizerFast"})
_ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
# Python errors a template can raise while rendering (a bad index, adding a string to a number ...)
_TEMPLATE_RUNTIME_ERRORS = (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError,
                            OverflowError)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A folder's chat template and the special tokens it is rendered with."""

    source: str  # the jinja template text
    special_tokens: dict[str, str]  # bos_token, eos_token ... as plain strings
    tool_use_source: Optional[str] = None  # the template named "tool_use", used when tools are given
    origin: str = dataclasses.field(default="chat template", compare=False)  # names it in error messages

    @classmethod
    def from_folder(cls, folder: Path) -> Optional["ChatTemplate"]:
        """The folder's default chat template, or None when it has none.

        Looked up like transformers 5: chat_template.jinja (with additional_chat_templates/*.jinja
        as named templates), else chat_template.json's "chat_template", else tokenizer_config.json's
        "chat_template" (a string, or a list of {"name", "template"} of which "default" is used)."""
        folder = Path(folder)
        config = _read_config(folder)
        templates = _find_templates(folder, config)
        if templates is None:
            return None
        if "default" not in templates:
            raise UserError(f"chat template of {folder}: templates named {', '.join(sorted(templates))} "
                            "but none named 'default'")
        template = cls(source=templates["default"], special_tokens=_special_token_strings(folder, config),
                       tool_use_source=templates.get("tool_use"), origin=f"chat template of {folder}")
        template._compiled(template.source)  # a syntax error is reported now, not at the first prompt
        if template.tool_use_source is not None:
            template._compiled(template.tool_use_source)
        return template

    def render(self, messages: list[Any], add_generation_prompt: bool = True, tools: Optional[list[dict]] = None,
               documents: Optional[list[dict]] = None, **template_args: Any) -> str:
        """The prompt text, as `tokenizer.apply_chat_template(messages, tokenize=False, ...)` gives it.

        `template_args` (enable_thinking=False ...) reach the template as variables and win over the
        special tokens of the same name."""
        if not messages:
            raise UserError(f"{self.origin}: cannot render an empty conversation")
        if tools is not None and not all(isinstance(tool, Mapping) for tool in tools):
            raise TypeError("tools must be JSON schemas (dicts); Python functions need transformers' get_json_schema")
        if documents is not None and not all(isinstance(document, Mapping) for document in documents):
            raise TypeError("documents must be dicts with 'title' and 'text' keys")
        source = self.tool_use_source if tools is not None and self.tool_use_source is not None else self.source
        compiled = self._compiled(source)
        chat = [_plain(message) for message in messages]
        for message in chat:
            if not isinstance(message, dict):
                raise TypeError(f"chat messages must be dicts or dataclasses, got {message!r}")
        chat = _alias_reasoning([{key: value for key, value in message.items() if value is not None}
                                 for message in chat])
        variables = _plain({**self.special_tokens, **template_args})
        try:
            return compiled.render(messages=chat, tools=_plain(tools), documents=_plain(documents),
                                   add_generation_prompt=add_generation_prompt, **variables)
        except _jinja_errors() as error:
            raise UserError(f"{self.origin}: {_describe(error)}") from None
        except _TEMPLATE_RUNTIME_ERRORS as error:
            raise UserError(f"{self.origin}: {type(error).__name__}: {one_line(str(error))}") from None

    def _compiled(self, source: str) -> Any:
        import jinja2.exceptions

        try:
            return _compile(source)
        except jinja2.exceptions.TemplateError as error:
            raise UserError(f"{self.origin}: {_describe(error)}") from None


class TokenCounter:
    """Counts tokens as the folder's transformers tokenizer would: `len(tokenizer(text)["input_ids"])`.

    From tokenizer.json with the `tokenizers` library, adjusted the way transformers 5's
    TokenizersBackend adjusts it on load: special tokens named in tokenizer_config.json (or the
    legacy special_tokens_map.json / added_tokens.json) that tokenizer.json lacks are added, the
    config's added_tokens_decoder flags win, split_special_tokens is honoured, and truncation or
    padding saved in tokenizer.json is off. add_bos_token/add_eos_token in tokenizer_config.json are
    ignored, as transformers ignores them when tokenizer.json exists: the file's post-processor
    decides what add_special_tokens=True adds. Without tokenizer.json a backend reads the folder its own
    way (pipeline.backends.local_tokenizer loads the transformers tokenizer: slow, it imports transformers)."""

    def __init__(self, encode: Callable[[str, bool], int], exact: bool, origin: str) -> None:
        self._encode = encode
        self.exact = exact  # False: tokenizer_class rebuilds its backend in transformers; counts may differ
        self.origin = origin  # the file or folder the tokenizer was read from

    @classmethod
    def from_folder(cls, folder: Path, fallback: Optional[Callable[[Path], "TokenCounter"]] = None) -> "TokenCounter":
        """The folder's tokenizer.json read with the tokenizers library; without one, `fallback` (a backend's
        way of reading other tokenizer files: pipeline.backends.local_tokenizer), else a UserError."""
        folder = Path(folder)
        if not (folder / TOKENIZER_FILE).is_file():
            if fallback is None:
                raise UserError(f"{folder} has no {TOKENIZER_FILE} to count tokens with")
            return fallback(folder)
        from tokenizers import Tokenizer

        path = folder / TOKENIZER_FILE
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for unreadable files
            raise UserError(f"cannot read the tokenizer {path}: {one_line(str(error))}") from None
        padding = tokenizer.padding
        tokenizer.no_truncation()  # transformers encodes with truncation and padding off unless asked
        tokenizer.no_padding()
        config = _read_config(folder)
        tokens = _tokens_to_add(folder, config, tokenizer, pad_default=(padding or {}).get("pad_token"))
        if tokens:
            tokenizer.add_tokens(tokens)
        tokenizer.encode_special_tokens = bool(config.get("split_special_tokens", False))

        def encode(text: str, add_special_tokens: bool) -> int:
            return len(tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

        return cls(encode, exact=config.get("tokenizer_class") in GENERIC_TOKENIZER_CLASSES, origin=str(path))

    def count(self, text: str, add_special_tokens: bool) -> int:
        """How many tokens `text` encodes to; add_special_tokens as in `tokenizer(text, add_special_tokens=...)`."""
        return self._encode(text, add_special_tokens)


# --- template lookup and special tokens ---------------------------------------------------------------


def _read_json(path: Path) -> Optional[Any]:
    """The file's JSON value, None when there is no such file; a UserError naming the file (and the
    line) when it is a folder, not UTF-8 or not JSON."""
    if not path.exists():
        return None
    return read_json(path)


def _read_object(path: Path) -> dict:
    value = _read_json(path)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def _read_config(folder: Path) -> dict:
    """tokenizer_config.json, with the legacy special_tokens_map.json merged in as transformers does:
    only when the config has no added_tokens_decoder, and then the map's entries win."""
    config = _read_object(folder / TOKENIZER_CONFIG)
    if "added_tokens_decoder" in config:
        return config
    legacy = _read_object(folder / SPECIAL_TOKENS_MAP)
    for key, value in legacy.items():
        if key == "extra_special_tokens" and isinstance(value, list):
            existing = list(config.get("extra_special_tokens") or config.get("additional_special_tokens") or [])
            config["extra_special_tokens"] = existing + [token for token in value if token not in existing]
        elif isinstance(value, dict) and key != "extra_special_tokens":
            config[key] = {**{k: v for k, v in value.items() if k != "special"}, "special": True}
        else:
            config[key] = value
    return config


def _find_templates(folder: Path, config: dict) -> Optional[dict[str, str]]:
    """Named templates ("default", "tool_use" ...) from the first place that has any, or None."""
    templates: dict[str, str] = {}
    if (folder / TEMPLATE_FILE).is_file():
        templates["default"] = _read_text(folder / TEMPLATE_FILE)
    if (folder / TEMPLATE_DIR).is_dir():
        for path in sorted((folder / TEMPLATE_DIR).glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = _read_text(path)  # as in transformers: wins
    if templates:
        return templates
    legacy = _read_json(folder / LEGACY_TEMPLATE_FILE)
    if legacy is not None:
        if not isinstance(legacy, dict) or not isinstance(legacy.get("chat_template"), str):
            raise UserError(f"{folder / LEGACY_TEMPLATE_FILE} must be an object with a \"chat_template\" string")
        return {"default": legacy["chat_template"]}
    value = config.get("chat_template")
    if value is None:
        return None
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list) and all(isinstance(item, dict) and isinstance(item.get("name"), str)
                                       and isinstance(item.get("template"), str) for item in value):
        return {item["name"]: item["template"] for item in value}
    raise UserError(f"{folder / TOKENIZER_CONFIG}: chat_template must be a string or a list of "
                    "{\"name\": ..., \"template\": ...} objects")


def _read_text(path: Path) -> str:
    return read_text(path)  # a stray byte: path:line: not UTF-8 text, as for every file we read


def _named_special_tokens(config: dict, pad_default: Optional[str]) -> dict[str, Any]:
    """The named special tokens (the standard seven, then model-specific ones such as image_token),
    as written in the config: a string, or an AddedToken dict."""
    named: dict[str, Any] = {}
    for key in NAMED_SPECIAL_TOKENS:
        value = config.get(key)
        if key == "pad_token" and key not in config:
            value = pad_default  # transformers takes the pad_token of tokenizer.json's padding section
        if value is not None:
            named[key] = value
    for key, value in config.items():  # transformers: any other "*_token" key holding a token
        if key.endswith("_token") and key not in NAMED_SPECIAL_TOKENS and _is_token(value):
            named[key] = value
    extra = config.get("extra_special_tokens")
    if isinstance(extra, dict):
        named.update({key: value for key, value in extra.items() if _is_token(value)})
    return named


def _is_token(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("content"), str)
                                      and (value.get("__type") == "AddedToken" or "special" in value))


def _token_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value["content"])


def _special_token_strings(folder: Path, config: dict) -> dict[str, str]:
    pad_default = None
    if "pad_token" not in config and (folder / TOKENIZER_FILE).is_file():
        pad_default = _tokenizer_json_pad_token(folder / TOKENIZER_FILE)
    return {key: _token_text(value) for key, value in _named_special_tokens(config, pad_default).items()}


def _tokenizer_json_pad_token(path: Path) -> Optional[str]:
    """The pad_token of tokenizer.json's "padding" section, without parsing the whole vocabulary.

    The tokenizers library writes "version", "truncation" and "padding" first, so the top-level
    keys are walked in the file's head; a file laid out otherwise is parsed whole."""
    decoder = json.JSONDecoder()
    try:
        with path.open(encoding="utf-8") as handle:
            head = handle.read(1 << 16)
        index = _skip_space(head, 0)
        if head[index] != "{":
            return None
        index += 1
        while True:
            index = _skip_space(head, index)
            if head[index] == "}":
                return None
            key, index = decoder.raw_decode(head, _skip_space(head, index))
            index = _skip_space(head, index)
            if head[index] != ":":
                return None
            value, index = decoder.raw_decode(head, _skip_space(head, index + 1))
            if key == "padding":
                return value.get("pad_token") if isinstance(value, dict) else None
            index = _skip_space(head, index)
            if head[index] == ",":
                index += 1
    except (IndexError, ValueError, OSError, UnicodeDecodeError):
        whole = _read_json(path)
        padding = whole.get("padding") if isinstance(whole, dict) else None
        return padding.get("pad_token") if isinstance(padding, dict) else None


def _skip_space(text: str, index: int) -> int:
    while text[index] in " \t\r\n":
        index += 1
    return index


def _added_token(spec: Any, special: Optional[bool] = None) -> Any:
    from tokenizers import AddedToken

    if isinstance(spec, str):
        return AddedToken(spec, special=True if special is None else special)
    fields = {key: spec[key] for key in _ADDED_TOKEN_FIELDS if key in spec}
    if special is not None:
        fields["special"] = special
    return AddedToken(**fields)


def _tokens_to_add(folder: Path, config: dict, tokenizer: Any, pad_default: Optional[str]) -> list:
    """The tokens transformers' TokenizersBackend.__init__ adds to the backend it read from tokenizer.json."""
    named = _named_special_tokens(config, pad_default)
    extra = [value for value in _extra_special_tokens(config) if _is_token(value)]
    file_tokens = tokenizer.get_added_tokens_decoder()
    configured: dict[int, Any] = {}
    if "added_tokens_decoder" in config:
        for index, spec in config["added_tokens_decoder"].items():
            configured[int(index)] = _added_token(spec)
    else:  # legacy: added_tokens.json, then tokenizer.json's own added tokens
        special = {_token_text(named[key]) for key in NAMED_SPECIAL_TOKENS if key in named}
        special |= {_token_text(value) for value in extra}
        for content, index in _read_object(folder / "added_tokens.json").items():
            configured[int(index)] = _added_token({"content": content, "lstrip": False, "rstrip": False,
                                                   "normalized": content not in special,
                                                   "special": content in special})
        configured.update(file_tokens)
    # Every configured token is re-added (transformers' "already added" check compares ids with tokens and
    # never matches), so its flags replace tokenizer.json's; then named and extra special tokens missing
    # from both are added as special tokens.
    tokens = [token for _, token in sorted(configured.items())]
    known = {token.content for token in file_tokens.values()} | {token.content for token in tokens}
    for value in [*named.values(), *extra]:
        if _token_text(value) not in known:
            tokens.append(_added_token(value))
            known.add(_token_text(value))
    named_strings = {_token_text(value) for value in named.values()}
    for token in tokens:
        if not token.special and token.content in named_strings:
            token.special = True
    return tokens


def _extra_special_tokens(config: dict) -> list:
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list) and extra:
        return extra
    legacy = config.get("additional_special_tokens")
    return legacy if isinstance(legacy, list) else []


# --- the jinja environment, as transformers.utils.chat_template_utils builds it -----------------------


@lru_cache(maxsize=64)
def _compile(source: str) -> Any:
    return _environment().from_string(source)


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    import jinja2.exceptions
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %} renders its body (transformers tracks assistant spans with it)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # jinja's own tojson escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class TemplateDict:
        """`dict(...)` in a template, without attribute access to the real type."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace(...)` refusing underscore-prefixed attributes."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
                    "Please rename the attribute.")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[GenerationTag, jinja2.ext.loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    environment.globals["dict"] = TemplateDict()
    environment.globals["namespace"] = TemplateNamespace
    return environment


def _jinja_errors() -> tuple[type[BaseException], ...]:
    import jinja2.exceptions

    return (jinja2.exceptions.TemplateError,)


def _describe(error: BaseException) -> str:
    message = one_line(getattr(error, "message", None) or str(error)) or type(error).__name__
    lineno = getattr(error, "lineno", None)
    return f"line {lineno}: {message}" if lineno else message


# --- template data, as transformers prepares it -------------------------------------------------------

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _alias_reasoning(chat: list[dict]) -> list[dict]:
    """Fill reasoning_content (and thinking, for gpt-oss templates) from whichever name the message used."""
    aliased = []
    for message in chat:
        reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


def _plain(value: Any) -> Any:
    """Rebuild a value out of plain JSON-like types; anything else becomes "<TypeName>"."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return _plain(value.item())  # a numpy scalar
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"
