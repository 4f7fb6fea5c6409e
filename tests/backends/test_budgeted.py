"""The thinking budget and continuation on a server, in parts (pipeline.backends.openai.budgeted), against a
fake /completions transport: a greedy "model" whose tokens are characters and the two tags, answering as
`transformers serve` does (a stop string is kept in the text, the end of turn is counted in the usage,
`length` whenever max_tokens tokens came) or as vLLM does (the stop string left out, named in stop_reason).
The same splits through a real `transformers serve` are checked end to end in test_thinking.py."""

from __future__ import annotations

import asyncio
import re

import pytest

from pipeline.backends.openai.budgeted import Part, Sizes, generate
from pipeline.core.reasoning import THINK_TAGS

PROMPT = "<|user|>2+2?<|assistant|>"
THOUGHT = "abcdefghij"  # 10 reasoning tokens
ANSWER = "\n\n1234"  # 6 answer tokens
EOT = "<eot>"


def tokens(text: str) -> list[str]:
    return re.findall(r"<think>|</think>|.", text, flags=re.S)


class FakeModel:
    """Greedy: from the prompt it writes <think>THOUGHT</think>ANSWER<eot>; once the thinking is closed (by
    itself or forced) it writes ANSWER; `opens=False`: it answers at once."""

    def __init__(self, vllm: bool = False, opens: bool = True) -> None:
        self.vllm, self.opens = vllm, opens
        self.sent: list[tuple[str, object, list[str]]] = []

    def plan(self, written: str) -> list[str]:
        if not self.opens:
            return tokens(ANSWER) + [EOT]
        if "</think>" in written:
            closed = written.index("</think>") + len("</think>")
            return tokens(written[:closed]) + tokens(ANSWER) + [EOT]
        return tokens("<think>" + THOUGHT + "</think>" + ANSWER) + [EOT]

    async def complete(self, prompt: str, max_tokens, stop: list[str]) -> Part:
        self.sent.append((prompt, max_tokens, stop))
        assert prompt.startswith(PROMPT)
        written = prompt[len(PROMPT):]
        plan = self.plan(written)
        done = tokens(written)
        assert plan[:len(done)] == done, (written, plan)
        out: list[str] = []
        for token in plan[len(done):]:
            if max_tokens is not None and len(out) >= max_tokens:
                break
            out.append(token)
            if token == EOT:
                break
            hit = next((s for s in stop if "".join(out).endswith(s)), None)
            if hit is not None:
                if self.vllm:  # the stop string's tokens are counted, the text leaves them out
                    return Part("".join(out)[:-len(hit)], len(out), "stop", stop_reason=hit)
                return Part("".join(out), len(out), "stop")
        text = "".join(t for t in out if t != EOT)
        length = max_tokens is not None and len(out) >= max_tokens
        if self.vllm:
            length = length and out[-1] != EOT
        return Part(text, len(out), "length" if length else "stop")


SIZES = Sizes(open=1, close=1, wrapup=0, count=lambda text: len(tokens(text)))


def run(model: FakeModel, budget=None, answer_limit=8, continue_on_length=0, wrapup="", starts=False):
    sizes = Sizes(open=1, close=1, wrapup=len(tokens(wrapup)), count=SIZES.count)
    prompt = PROMPT + ("<think>" if starts else "")  # starts: the template opened the block
    return asyncio.run(generate(prompt, model.complete, markers=THINK_TAGS, thinks=True, sizes=sizes, budget=budget,
                                wrapup=wrapup, answer_limit=answer_limit, continue_on_length=continue_on_length))


@pytest.mark.parametrize("vllm", [False, True], ids=["transformers-serve", "vllm"])
def test_a_budget_cuts_the_thinking_at_n_tokens_and_the_answer_keeps_its_limit(vllm):
    model = FakeModel(vllm)
    result = run(model, budget=4)
    assert (result.reasoning, result.text) == ("abcd", "1234")
    assert (result.reasoning_tokens, result.answer_tokens, result.reasoning_truncated) == (4, 6, False)
    # <think> + 4 + the forced </think> + 6 answer tokens + the end of turn
    assert result.completion_tokens == 13 and result.finish_reason == "stop"
    # the probe for <think>, the thinking capped at the budget, the answer from the forced close
    assert [max_tokens for _, max_tokens, _ in model.sent] == [1, 4, 8]
    assert model.sent[2][0] == PROMPT + "<think>abcd</think>"


@pytest.mark.parametrize("vllm", [False, True], ids=["transformers-serve", "vllm"])
def test_thinking_that_closes_within_the_budget_is_not_forced(vllm):
    result = run(FakeModel(vllm), budget=64)
    assert (result.reasoning, result.reasoning_tokens, result.answer_tokens) == (THOUGHT, 10, 6)
    assert result.completion_tokens == 1 + 10 + 1 + 6 + 1
    unbounded = run(FakeModel(vllm), budget=None)
    assert (unbounded.reasoning, unbounded.reasoning_tokens, unbounded.answer_tokens) == (THOUGHT, 10, 6)


def test_budget_zero_and_a_wrapup_count_as_the_in_process_processor_counts():
    zero = run(FakeModel(), budget=0)  # <think> then the forced close at once: no reasoning request
    assert (zero.reasoning, zero.reasoning_tokens, zero.text, zero.requests) == ("", 0, "1234", 2)
    wrapped = run(FakeModel(), budget=3, wrapup="OK.")  # the wrap-up's tokens count as reasoning
    assert (wrapped.reasoning, wrapped.reasoning_tokens, wrapped.completion_tokens) == ("abcOK.", 6, 1 + 3 + 3 + 1 + 7)
    opened = run(FakeModel(), budget=2, starts=True)  # the prompt opened the block: no probe
    assert (opened.reasoning, opened.reasoning_tokens, opened.answer_tokens, opened.requests) == ("ab", 2, 6, 2)


def test_an_answer_cut_by_length_is_continued_into_one_answer():
    cut = run(FakeModel(), budget=4, answer_limit=3)
    assert (cut.text, cut.answer_tokens, cut.finish_reason, cut.continuations) == ("1", 3, "length", 0)
    continued = run(FakeModel(), budget=4, answer_limit=3, continue_on_length=2)
    assert (continued.text, continued.answer_tokens, continued.finish_reason) == ("1234", 6, "stop")
    # "\n\n1", "234", then the end of turn alone: three parts, as in process
    assert continued.continuations == 2 and continued.reasoning_tokens == 4


def test_an_end_of_turn_on_the_last_allowed_token_is_a_stop():
    # 6 answer tokens + the end of turn = 7 = max_tokens: transformers serve says length, in process it is a stop
    result = run(FakeModel(), budget=4, answer_limit=7, continue_on_length=1)
    assert (result.finish_reason, result.answer_tokens, result.continuations) == ("stop", 6, 0)


def test_a_model_that_answers_at_once_keeps_its_answer_limit():
    model = FakeModel(opens=False)
    result = run(model, budget=4, answer_limit=4)
    assert (result.text, result.reasoning, result.answer_tokens, result.finish_reason) == ("\n\n12", "", 4, "length")
    assert [max_tokens for _, max_tokens, _ in model.sent] == [1, 3]  # the probe's token counts against the limit


def test_an_end_of_turn_inside_the_thinking_leaves_no_answer():
    class EndsInThought(FakeModel):
        def plan(self, written):
            return tokens("<think>abc") + [EOT]

    for budget in (4, 8):  # the end of turn as the budget's last token, or before it: never a forced close
        result = run(EndsInThought(), budget=budget)
        assert (result.text, result.reasoning, result.reasoning_truncated) == ("", "abc", True), budget
        assert (result.reasoning_tokens, result.answer_tokens, result.finish_reason) == (3, 0, "stop"), budget
