"""Log-likelihoods on the in-process model: the shared-context path equals scoring each choice from
scratch, the token boundary is split as lm-eval splits it (a context ending in a space, a choice
merging with the context's last token), and rolling windows predict every token of a long text once."""

from __future__ import annotations

import math

import pytest

from pipeline.backends.transformers.loglikelihood import (
    rolling_windows,
    score_choices,
    score_from_scratch,
    score_rolling,
    split_pair,
)


@pytest.fixture(scope="module")
def char_model(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return model, (lambda text: tokenizer(text, add_special_tokens=True)["input_ids"])


@pytest.fixture(scope="module")
def bpe_model():
    """A random Llama over a BPE vocabulary in which 'hello' is one token (so 'hel' + 'lo' merge)."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM

    pieces = ["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz ,", "he", "hel", "lo", "hello"]
    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, unk_token="<unk>",
                                     merges=[("h", "e"), ("he", "l"), ("l", "o"), ("hel", "lo")]))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=0)).eval()
    return model, (lambda text: tokenizer.encode(text).ids)


def test_shared_context_equals_each_choice_from_scratch(char_model):
    model, encode = char_model
    questions = [("Q: 2+2=", [" 4", " 5", " 22"]), ("A much longer question: 10+20+30 =", [" 60", " 6", " sixty"]),
                 ("Hi", [" there", "!"])]
    pairs = [[split_pair(encode, context, choice) for choice in choices] for context, choices in questions]
    results = score_choices(model, pairs, pad_id=0, limit=None)
    for (context, choices), result, row in zip(questions, results, pairs):
        assert result.error is None and result.context_tokens == len(row[0].context)
        for pair, got in zip(row, result.continuations):
            alone = score_from_scratch(model, pair.context, pair.continuation)
            assert got.loglikelihood == pytest.approx(alone.loglikelihood, abs=1e-4)
            assert got.is_greedy == alone.is_greedy and got.tokens == len(pair.continuation)
            assert got.loglikelihood < 0


def test_a_context_ending_in_a_space_gives_the_space_to_the_continuation(char_model):
    model, encode = char_model
    pair = split_pair(encode, "Answer: ", "yes")
    assert pair.context == encode("Answer:") and not pair.merged
    assert pair.continuation == encode("Answer: yes")[len(encode("Answer:")):]  # " yes": the space is scored too
    (result,) = score_choices(model, [[pair]], pad_id=0, limit=None)
    assert result.continuations[0].tokens == 4


def test_a_choice_merging_with_the_contexts_last_token_is_scored_from_the_common_prefix(bpe_model):
    model, encode = bpe_model
    assert len(encode("hello")) == 1 and encode("hel") != encode("hello")[:len(encode("hel"))]
    merged = split_pair(encode, "world, hel", "lo")
    whole = encode("world, hello")
    assert merged.merged and merged.context + merged.continuation == whole
    assert merged.context == whole[:len(merged.context)] and merged.context  # the shared prefix, not "hel"'s tokens
    plain = split_pair(encode, "world, hel", " there")
    (result,) = score_choices(model, [[merged, plain]], pad_id=0, limit=None)
    assert result.continuations[0].merged and not result.continuations[1].merged
    assert result.continuations[0].loglikelihood == pytest.approx(
        score_from_scratch(model, merged.context, merged.continuation).loglikelihood, abs=1e-5)
    assert result.continuations[1].loglikelihood == pytest.approx(
        score_from_scratch(model, plain.context, plain.continuation).loglikelihood, abs=1e-4)


def test_rolling_windows_predict_each_token_once_on_a_text_longer_than_the_context(char_model):
    model, encode = char_model
    tokens = encode("The quick brown fox jumps over the lazy dog. " * 8)[1:]  # 360 tokens, context 128
    windows = list(rolling_windows(tokens, prefix=2, max_length=128))
    assert len(windows) == math.ceil(len(tokens) / 128)
    assert [t for _, predicted in windows for t in predicted] == tokens
    assert all(len(inputs) <= 128 and len(inputs) == len(predicted) or len(inputs) > len(predicted)
               for inputs, predicted in windows)
    result = score_rolling(model, tokens, prefix=2, max_length=128)
    by_window = sum(score_from_scratch(model, inputs[:len(inputs) - len(predicted) + 1], predicted).loglikelihood
                    for inputs, predicted in windows)
    assert result.tokens == len(tokens) and result.windows == len(windows)
    assert result.loglikelihood == pytest.approx(by_window, rel=1e-5)
    short = encode("The quick brown fox.")[1:]
    assert score_rolling(model, short, 2, 128).loglikelihood == pytest.approx(
        score_from_scratch(model, [2], short).loglikelihood, abs=1e-4)
