"""pipeline.data.chat_template against transformers: same prompt text, same token counts, no
heavy imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

from pipeline.backends.local_tokenizer import token_counter
from pipeline.data.chat_template import ChatTemplate, TokenCounter
from pipeline.core.config import ASSETS_DIR
from pipeline.core.errors import UserError

DEMO_MODEL = ASSETS_DIR / "demo_model"

SYSTEM = {"role": "system", "content": "You are terse. Answer with a number."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is 2+2?"}],
    "multi": [SYSTEM, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
              {"role": "user", "content": "And  \"3+3\" <b>über</b>?\n  Explain."}],
    "no_system": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " hello "},
                  {"role": "user", "content": "bye"}],
}

CHATML = textwrap.dedent("""\
    {%- if tools %}
    <|im_start|>system
    {% if messages[0].role == 'system' %}{{ messages[0].content }}

    {% endif %}# Tools
    <tools>
      {% for tool in tools %}
    {{ tool | tojson }}
      {% endfor %}
    </tools><|im_end|>
    {% elif messages[0].role == 'system' %}
    <|im_start|>system
    {{ messages[0].content }}<|im_end|>
    {% endif %}
    {%- set ns = namespace(turns=0) %}
    {%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role: ' + message.role) }}{% endif %}
    {%- if message.role == 'system' and not loop.first %}{{ raise_exception('the system message must come first') }}{% endif %}
    {%- if message.role != 'system' %}
    {%- set ns.turns = ns.turns + 1 %}
    <|im_start|>{{ message.role }}
        {% if message.role == 'assistant' and message.reasoning_content is defined %}<think>
    {{ message.reasoning_content }}
    </think>

    {% endif %}{{ message.content }}<|im_end|>
    {% endif %}
    {%- if loop.last %}
    {%- if metadata is defined %}<|im_start|>meta
    {{ metadata | tojson }} {{ ns.turns }}<|im_end|>
    {% endif %}
    {%- if add_generation_prompt %}
    <|im_start|>assistant
    {% if enable_thinking is defined and enable_thinking is false %}<think>

    </think>

    {% endif %}
    {%- endif %}
    {%- endif %}
    {%- endfor %}
    """)

LLAMA3 = textwrap.dedent("""\
    {{- bos_token }}
    {%- if messages[0]['role'] == 'system' %}
        {%- set system_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {%- set system_message = "" %}
    {%- endif %}
    {%- if date_string is not defined %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
    {{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
    {{- "Cutting Knowledge Date: December 2023\\n" }}
    {{- "Today Date: " + date_string + "\\n\\n" }}
    {{- system_message }}
    {{- "<|eot_id|>" }}
    {%- for message in messages %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endfor %}
    {%- if add_generation_prompt %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
    {%- endif %}
    """)

CORPUS = ["What is 2+2? And 3+3? Explain the answer, please.", "You are terse. Answer with a number.",
          "hello there, the quick brown fox jumps over the lazy dog", "über <b>bold</b> \"quoted\" text 12345"] * 20


def write_bpe_folder(folder: Path, specials: list[str], config: dict, bos: str | None = None,
                     chat_template: str | None = None) -> Path:
    """A byte-level BPE tokenizer folder trained on a few sentences, with `bos` added by its post-processor."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if chat_template is not None:
        (folder / "chat_template.jinja").write_text(chat_template)
    return folder


@pytest.fixture(scope="module")
def chatml_model(tmp_path_factory) -> Path:
    return write_bpe_folder(tmp_path_factory.mktemp("chatml") / "model", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                            {"tokenizer_class": "TokenizersBackend", "eos_token": "<|im_end|>",
                             "pad_token": "<|endoftext|>"}, chat_template=CHATML)


@pytest.fixture(scope="module")
def llama3_model(tmp_path_factory) -> Path:
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return write_bpe_folder(tmp_path_factory.mktemp("llama3") / "model", specials,
                            {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                             "eos_token": "<|eot_id|>", "add_bos_token": False, "chat_template": LLAMA3},
                            bos="<|begin_of_text|>")


@lru_cache(maxsize=None)
def transformers_tokenizer(folder: Path):
    """The tokenizer as pipeline.backends.transformers.load.load_tokenizer reads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def reference_render(folder: Path, messages: list[dict], add_generation_prompt: bool, **kwargs) -> str:
    return transformers_tokenizer(folder).apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs)


def reference_count(folder: Path, text: str, add_special_tokens: bool) -> int:
    return len(transformers_tokenizer(folder)(text, add_special_tokens=add_special_tokens)["input_ids"])


def model_folder(request, name: str) -> Path:
    return DEMO_MODEL if name == "demo" else request.getfixturevalue(name)


@pytest.mark.parametrize("model", ["demo", "tiny_model", "chatml_model", "llama3_model"])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_and_count_match_transformers(request, model, conversation, add_generation_prompt):
    folder = model_folder(request, model)
    messages = CONVERSATIONS[conversation]
    template = ChatTemplate.from_folder(folder)
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    assert text == reference_render(folder, messages, add_generation_prompt)
    assert messages[-1]["content"].strip() in text
    counter = TokenCounter.from_folder(folder)
    assert counter.exact
    for add_special_tokens in (True, False):
        assert counter.count(text, add_special_tokens) == reference_count(folder, text, add_special_tokens)


@pytest.mark.parametrize("args", [{"enable_thinking": False}, {"enable_thinking": True},
                                  {"metadata": {"note": "<b>ü</b> & \"q\"", "n": [1, 2.5, None]}}])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_template_arguments_reach_the_template(chatml_model, args, add_generation_prompt):
    messages = CONVERSATIONS["multi"]
    text = ChatTemplate.from_folder(chatml_model).render(messages, add_generation_prompt, **args)
    assert text == reference_render(chatml_model, messages, add_generation_prompt, **args)
    plain = ChatTemplate.from_folder(chatml_model).render(messages, add_generation_prompt)
    if args.get("enable_thinking") is False and add_generation_prompt:
        assert text == plain + "<think>\n\n</think>\n\n"
    elif "metadata" in args:
        assert '"<b>ü</b> & \\"q\\""' in text  # transformers' tojson: no HTML escaping, no \\u escapes
    else:
        assert text == plain


def test_template_arguments_override_special_tokens(llama3_model):
    messages = CONVERSATIONS["single"]
    text = ChatTemplate.from_folder(llama3_model).render(messages, bos_token="[BOS]", date_string="1 Jan 2030")
    assert text == reference_render(llama3_model, messages, True, bos_token="[BOS]", date_string="1 Jan 2030")
    assert text.startswith("[BOS]<|start_header_id|>system") and "Today Date: 1 Jan 2030" in text


def test_bos_from_the_post_processor_is_counted_once(llama3_model):
    text = ChatTemplate.from_folder(llama3_model).render(CONVERSATIONS["multi"])
    counter = TokenCounter.from_folder(llama3_model)
    assert text.startswith("<|begin_of_text|>")
    assert counter.count(text, add_special_tokens=True) == counter.count(text, add_special_tokens=False) + 1


def test_tools_and_documents_are_passed_like_transformers(chatml_model):
    tools = [{"type": "function", "function": {"name": "add", "description": "Add <two> numbers",
                                               "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]
    messages = CONVERSATIONS["multi"]
    text = ChatTemplate.from_folder(chatml_model).render(messages, tools=tools, documents=[{"title": "t", "text": "x"}])
    assert text == reference_render(chatml_model, messages, True, tools=tools, documents=[{"title": "t", "text": "x"}])
    assert json.dumps(tools[0], ensure_ascii=False) in text


def test_messages_are_prepared_like_transformers(tmp_path):
    """None values dropped, reasoning copied under its standard names, values rebuilt as plain data."""
    template = ("{% for m in messages %}{{ m.role }}|{{ m.content }}|{{ m.tool_calls is defined }}|"
                "{{ m.reasoning_content | default('-') }}|{{ m.thinking | default('-') }};{% endfor %}"
                "{{ extra | tojson }}")
    folder = write_bpe_folder(tmp_path / "m", ["<s>"], {"tokenizer_class": "TokenizersBackend", "bos_token": "<s>"},
                              chat_template=template)
    messages = [{"role": "user", "content": "q", "tool_calls": None},
                {"role": "assistant", "content": "a", "reasoning": "because"}]
    extra = {"tuple": (1, 2), "nested": {"k": [True, None]}}
    text = ChatTemplate.from_folder(folder).render(messages, add_generation_prompt=False, extra=extra)
    assert text == reference_render(folder, messages, False, extra=extra)
    assert "user|q|False|-|-;assistant|a|False|because|because;" in text


def test_template_extensions_and_globals(tmp_path):
    """loop controls, {% generation %}, dict(), namespace() and strftime_now as transformers provides them."""
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
                "{% if loop.index > 3 %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}"
                "{% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]{% endgeneration %}"
                "{% else %}{{ m.content }}{% endif %}|{% endfor %}{{ dict(a=ns.n, b='<') | tojson }} {{ strftime_now('%Y') }}")
    (tmp_path / "chat_template.jinja").write_text(template)
    shutil.copy(DEMO_MODEL / "tokenizer.json", tmp_path)
    shutil.copy(DEMO_MODEL / "tokenizer_config.json", tmp_path)
    text = ChatTemplate.from_folder(tmp_path).render(CONVERSATIONS["multi"])
    assert text == reference_render(tmp_path, CONVERSATIONS["multi"], True)
    assert text.startswith('What is 2+2?|[4]|{"a": 2, "b": "<"} 20')


@pytest.mark.parametrize("source, message", [
    ("{% if messages[0].role != 'system' %}{{ raise_exception('a system message must come first') }}{% endif %}",
     "a system message must come first"),
    ("{% set ns = namespace(_hidden=1) %}{{ ns }}", "underscore-prefixed"),
    ("{{ messages[0].content + 1 }}", "TypeError"),
])
def test_template_errors_are_user_errors(tmp_path, source, message):
    (tmp_path / "chat_template.jinja").write_text(source)
    template = ChatTemplate.from_folder(tmp_path)
    with pytest.raises(UserError) as raised:
        template.render(CONVERSATIONS["single"])
    text = str(raised.value)
    assert message in text and str(tmp_path) in text and "\n" not in text


def test_raise_exception_in_a_realistic_template(chatml_model):
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    with pytest.raises(UserError, match="unknown role: tool"):
        ChatTemplate.from_folder(chatml_model).render(messages)
    with pytest.raises(Exception, match="unknown role: tool"):  # transformers agrees
        reference_render(chatml_model, messages, True)


def test_syntax_error_is_reported_when_reading_the_folder(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}\n{% endfor")
    with pytest.raises(UserError, match=r"chat template of .*: line 2: "):
        ChatTemplate.from_folder(tmp_path)


def test_empty_conversation_is_a_user_error():
    with pytest.raises(UserError, match="empty conversation"):
        ChatTemplate.from_folder(DEMO_MODEL).render([])


def test_no_template_gives_none(tmp_path, tiny_model):
    shutil.copytree(DEMO_MODEL, tmp_path / "demo")
    (tmp_path / "demo" / "chat_template.jinja").unlink()
    assert ChatTemplate.from_folder(tmp_path / "demo") is None
    assert transformers_tokenizer(tmp_path / "demo").chat_template is None
    assert ChatTemplate.from_folder(tmp_path / "empty") is None
    assert ChatTemplate.from_folder(tiny_model) is not None


def test_named_templates_in_tokenizer_config(tmp_path):
    config = {"tokenizer_class": "TokenizersBackend", "bos_token": "<s>",
              "chat_template": [{"name": "tool_use", "template": "TOOLS {{ tools | length }}"},
                                {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}]}
    folder = write_bpe_folder(tmp_path / "m", ["<s>"], config)
    template = ChatTemplate.from_folder(folder)
    messages = CONVERSATIONS["single"]
    assert template.render(messages) == reference_render(folder, messages, True) == "<s>What is 2+2?"
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert template.render(messages, tools=tools) == reference_render(folder, messages, True, tools=tools) == "TOOLS 1"


def test_named_templates_without_default_are_refused(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "rag", "template": "x"}]}))
    with pytest.raises(UserError, match="none named 'default'"):
        ChatTemplate.from_folder(tmp_path)


def test_template_lookup_order(tmp_path):
    folder = write_bpe_folder(tmp_path / "m", ["<s>"], {"tokenizer_class": "TokenizersBackend",
                                                        "chat_template": "from config"})
    assert ChatTemplate.from_folder(folder).render(CONVERSATIONS["single"]) == "from config"
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "from json"}))
    assert ChatTemplate.from_folder(folder).render(CONVERSATIONS["single"]) == "from json"
    (folder / "chat_template.jinja").write_text("from jinja")
    assert ChatTemplate.from_folder(folder).render(CONVERSATIONS["single"]) == "from jinja"
    assert reference_render(folder, CONVERSATIONS["single"], True) == "from jinja"


@pytest.mark.parametrize("name", ["tokenizer_config.json", "chat_template.json"])
def test_invalid_json_is_a_user_error_naming_the_file(tmp_path, name):
    shutil.copytree(DEMO_MODEL, tmp_path / "demo")
    (tmp_path / "demo" / "chat_template.jinja").unlink()
    (tmp_path / "demo" / name).write_text('{"bos_token": "<s>",')
    with pytest.raises(UserError, match=f"{name}:1: not valid JSON"):
        ChatTemplate.from_folder(tmp_path / "demo")
    if name == "tokenizer_config.json":
        with pytest.raises(UserError, match=f"{name}:1: not valid JSON"):
            TokenCounter.from_folder(tmp_path / "demo")


def _variant(folder: Path, config: dict, tokenizer_json: dict | None = None) -> Path:
    """A copy of the demo model's tokenizer with tokenizer_config.json entries and tokenizer.json sections replaced."""
    folder.mkdir(parents=True)
    data = json.loads((DEMO_MODEL / "tokenizer.json").read_text())
    data.update(tokenizer_json or {})
    (folder / "tokenizer.json").write_text(json.dumps(data))
    base = json.loads((DEMO_MODEL / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**base, **config}))
    shutil.copy(DEMO_MODEL / "chat_template.jinja", folder)
    return folder


ADDED = {"content": "a", "lstrip": True, "rstrip": False, "normalized": False, "single_word": False, "special": False}
VARIANTS = {  # each changes what transformers encodes compared with tokenizer.json read as written
    "extra_special_token_not_in_file": ({"extra_special_tokens": ["<|user|>", "ab"]}, None),
    "model_specific_token": ({"image_token": "cd"}, None),
    "new_bos_token": ({"bos_token": "xyz"}, None),
    "split_special_tokens": ({"split_special_tokens": True}, None),
    "truncation_in_file": ({}, {"truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst",
                                               "stride": 0}}),
    "added_token_flags_from_config": ({"added_tokens_decoder": {"200": ADDED}}, None),
    "legacy_special_tokens_map": ({}, None),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_counts_follow_transformers_adjustments(tmp_path, variant):
    from tokenizers import Tokenizer

    config, tokenizer_json = VARIANTS[variant]
    folder = _variant(tmp_path / variant, config, tokenizer_json)
    if variant == "legacy_special_tokens_map":
        (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "ef", "lstrip": False,
                                                                                  "rstrip": False, "normalized": False,
                                                                                  "single_word": False}}))
    text = "<s><|user|>ab cd xyz  a ef<|end|>" + "0123456789" * 3
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    counter = TokenCounter.from_folder(folder)
    for add_special_tokens in (True, False):
        expected = reference_count(folder, text, add_special_tokens)
        assert counter.count(text, add_special_tokens) == expected
    assert len(raw.encode(text).ids) != expected  # the adjustment mattered
    assert ChatTemplate.from_folder(folder).special_tokens == transformers_tokenizer(folder).special_tokens_map


def test_add_bos_token_in_config_is_ignored_like_transformers(tmp_path):
    folder = _variant(tmp_path / "bos", {"add_bos_token": True, "add_eos_token": True})
    text = "1+1="
    counter = TokenCounter.from_folder(folder)
    assert counter.count(text, True) == reference_count(folder, text, True) == len(text)


def test_pad_token_defaults_to_the_padding_section_of_tokenizer_json(tmp_path):
    padding = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None, "pad_id": 2,
               "pad_type_id": 0, "pad_token": "<s>"}
    folder = _variant(tmp_path / "pad", {}, {"padding": padding})
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special = ChatTemplate.from_folder(folder).special_tokens
    assert special["pad_token"] == "<s>" == transformers_tokenizer(folder).special_tokens_map["pad_token"]


def test_model_specific_tokenizer_class_is_not_exact(tmp_path):
    folder = _variant(tmp_path / "qwen", {"tokenizer_class": "Qwen2Tokenizer"})
    assert not TokenCounter.from_folder(folder).exact
    assert TokenCounter.from_folder(DEMO_MODEL).exact


def test_folder_without_tokenizer_json_uses_transformers(tmp_path):
    """A slow (vocab.json + merges.txt) GPT-2 tokenizer: counted through AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer.model.save(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}\n{% endfor %}"}))
    assert not (tmp_path / "tokenizer.json").exists()
    with pytest.raises(UserError, match="has no tokenizer.json"):  # pipeline.data alone reads tokenizer.json only
        TokenCounter.from_folder(tmp_path)
    counter = token_counter(tmp_path)
    assert counter.origin == str(tmp_path)  # not a tokenizer.json
    text = ChatTemplate.from_folder(tmp_path).render(CONVERSATIONS["multi"])
    assert text == reference_render(tmp_path, CONVERSATIONS["multi"], True)
    for add_special_tokens in (True, False):
        assert counter.count(text, add_special_tokens) == reference_count(tmp_path, text, add_special_tokens)


def test_rendering_and_counting_import_neither_torch_nor_transformers():
    code = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from pipeline.data.chat_template import ChatTemplate, TokenCounter
        folder = Path({str(DEMO_MODEL)!r})
        text = ChatTemplate.from_folder(folder).render([{{"role": "user", "content": "What is 2+2?"}}])
        count = TokenCounter.from_folder(folder).count(text, add_special_tokens=False)
        print(json.dumps({{"count": count, "heavy": [m for m in ("torch", "transformers") if m in sys.modules]}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    assert report["count"] == reference_count(DEMO_MODEL, "<s><|user|>What is 2+2?<|end|><|assistant|>", False)
