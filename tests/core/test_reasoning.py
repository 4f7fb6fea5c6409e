"""Reading reasoning apart from the answer (pipeline/core/reasoning.py): tags, a block that never
closes, a block the prompt opened, harmony channels, markers read from templates, and streams
split at every possible place giving the same split as the whole text."""

from __future__ import annotations

import pytest

from pipeline.core.reasoning import (
    HARMONY,
    THINK_TAGS,
    Markers,
    Split,
    StreamSplitter,
    opens_thinking,
    split_reasoning,
    thinking_support,
)


def stream(text: str, cuts: list[int], markers: Markers = THINK_TAGS, starts_in_thinking: bool = False
           ) -> tuple[str, str, Split]:
    splitter = StreamSplitter(markers, starts_in_thinking)
    reasoning, answer = "", ""
    for start, end in zip([0] + cuts, cuts + [len(text)]):
        r, a = splitter.feed(text[start:end])
        reasoning, answer = reasoning + r, answer + a
    r, a, split = splitter.finish()
    return reasoning + r, answer + a, split


def test_think_tags_split_reasoning_from_answer():
    split = split_reasoning("<think>\n1+7=8\ncarry 0\n</think>\n\n8728")
    assert split == Split(reasoning="1+7=8\ncarry 0", answer="8728", truncated=False, thought=True)


def test_empty_thinking_block_is_thinking_switched_off():
    split = split_reasoning("<think>\n\n</think>\n\n42")
    assert (split.reasoning, split.answer, split.truncated, split.thought) == ("", "42", False, True)


def test_plain_output_passes_unchanged():
    assert split_reasoning("  42 \n") == Split(answer="  42 \n")
    assert split_reasoning("<thi") == Split(answer="<thi")  # looked like a tag, never became one


def test_thinking_that_never_closes_is_truncated_with_no_answer():
    split = split_reasoning("<think>\n1+7+0=08\n2+0+0=0")
    assert split.truncated and split.answer == "" and split.reasoning == "1+7+0=08\n2+0+0=0"


def test_template_that_opens_the_block_in_the_prompt():
    # DeepSeek-R1 / Qwen3-2507 thinking models: the output starts inside the block
    assert split_reasoning("step one\n</think>\n\n7") == Split("step one", "7", False, True)
    assert split_reasoning("step one", starts_in_thinking=True) == Split("step one", "", True, True)
    assert opens_thinking("<|assistant|><think>\n", THINK_TAGS)
    assert not opens_thinking("<|assistant|><think>\n\n</think>\n\n", THINK_TAGS)


def test_models_own_markers():
    markers = Markers("tags", "◁think▷", "◁/think▷")
    assert split_reasoning("◁think▷hmm◁/think▷yes", markers) == Split("hmm", "yes", False, True)
    # another model's tags are just text
    assert split_reasoning("<think>a</think>b", markers).answer == "<think>a</think>b"


HARMONY_TEXT = ("<|channel|>analysis<|message|>User asks 2+2. Easy.<|end|>"
                "<|start|>assistant<|channel|>final<|message|>4<|return|>")


def test_gpt_oss_channels():
    assert split_reasoning(HARMONY_TEXT, HARMONY) == Split("User asks 2+2. Easy.", "4", False, True)
    cut = split_reasoning("<|channel|>analysis<|message|>User asks 2+2", HARMONY)
    assert cut.truncated and cut.answer == "" and cut.reasoning == "User asks 2+2"
    tool = split_reasoning("<|channel|>commentary to=functions.add <|constrain|>json<|message|>{\"a\": 1}<|call|>",
                           HARMONY)
    assert tool.answer == "{\"a\": 1}" and not tool.truncated and not tool.thought


CASES = [
    ("<think>\nabc </think>  \n\nanswer</think>x", THINK_TAGS, False),
    ("  <think>thinking\n\n more  \n", THINK_TAGS, False),
    ("no tags at all, </thin k> nothing", THINK_TAGS, False),
    ("inside already </think>\nout", THINK_TAGS, True),
    (HARMONY_TEXT, HARMONY, False),
    ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>commentary<|message|>b<|end|>", HARMONY, False),
]


@pytest.mark.parametrize("text,markers,starts", CASES)
def test_a_tag_split_across_chunks_splits_like_the_whole_text(text, markers, starts):
    whole = split_reasoning(text, markers, starts)
    for cut in range(len(text) + 1):  # two chunks, cut at every character
        reasoning, answer, split = stream(text, [cut], markers, starts)
        assert (reasoning, answer) == (whole.reasoning, whole.answer) and split == whole, cut
    reasoning, answer, split = stream(text, list(range(1, len(text))), markers, starts)  # one character a chunk
    assert (reasoning, answer) == (whole.reasoning, whole.answer) and split == whole


def test_the_stream_holds_back_only_what_may_be_a_tag():
    splitter = StreamSplitter()
    assert splitter.feed("<think>abc</th") == ("abc", "")
    assert splitter.feed("ink>\n\n") == ("", "")
    assert splitter.feed("12") == ("", "12")


def test_markers_and_switch_from_templates():
    qwen3 = ("{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
             "{%- endif %}{%- set content = content.split('</think>')[-1] %}")
    support = thinking_support(qwen3, ["<think>", "</think>", "<|im_start|>"])
    assert support.can_think and support.markers == THINK_TAGS and support.switch == "enable_thinking"
    assert "enable_thinking" in support.describe()

    gpt_oss = "{%- if reasoning_effort is defined %}Reasoning: {{ reasoning_effort }}{% endif %} low medium high " \
              "<|start|>assistant<|channel|>final<|message|>"
    support = thinking_support(gpt_oss, ["<|channel|>", "<|message|>"])
    assert support.markers == HARMONY and support.switch == "reasoning_effort"
    assert support.efforts == ("low", "medium", "high")

    r1 = "{{ '<｜Assistant｜><think>\\n' }}{% set content = content.split('</think>')[-1] %}"
    support = thinking_support(r1, [])
    assert support.can_think and support.switch is None and support.default_on

    plain = thinking_support("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}", ["<|end|>"])
    assert not plain.can_think and "no thinking" in plain.describe()
    # markers declared only as tokens count too
    assert thinking_support("", ["<thinking>", "</thinking>"]).markers == Markers("tags", "<thinking>", "</thinking>")
