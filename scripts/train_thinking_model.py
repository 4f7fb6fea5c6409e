"""Train the project's third demo model: a tiny character-level Llama that adds numbers of one to five
digits, better when it thinks first, and the more the longer it may think.

Multi-digit sums are beyond a model this small when it must answer at once; written out column by
column (digits, carry in, two-digit column sum), each step is a look-up, and the answer is the
column sums' last digits read back. The problems mix their lengths: the longer operand has 1 to 5
digits (as many problems of each), the other 1 to as many, so the thinking takes from 10 to 46
tokens and a thinking budget lets the model finish the short problems but not the long ones. The model is a hybrid thinker in the Qwen3 style: its chat
template takes ``enable_thinking`` (default true); switched off, the template writes an empty
thinking block ``<think>\\n\\n</think>\\n\\n`` and the model answers at once.

The conversation, as rendered by the model's chat template (one token per character; the chat
markers are special tokens, ``<think>`` and ``</think>`` single non-special tokens, so that a decoded
answer keeps them; ``<|end|>`` is the end-of-turn / eos token):

    <s><|user|>What is 4821+3907?<|end|><|assistant|>                      (thinking on: the default)
    <think>\\n1+7+0=08\\n2+0+0=02\\n8+9+0=17\\n4+3+1=08\\n</think>\\n\\n8728<|end|>         (model)

    <s><|user|>What is 4821+3907?<|end|><|assistant|><think>\\n\\n</think>\\n\\n   (enable_thinking=false)
    8728<|end|>                                                                       (model)

A full thinking block is 1 + 9 x columns tokens between the tags (a leading newline, then a line of
9 characters per column of the longer operand: 10, 19, 28, 37 or 46). Trained also on thinking cut
short after a random number of its tokens and closed by a forced ``</think>`` (as a thinking budget
does), the model still answers then, with a guess at the columns it did not write. Held out, the
accuracy climbs with the budget in steps of about a fifth, one per column count the budget lets
the model finish (figures: docs/thinking.md).

Run from the repository root (deterministic: fixed seeds, ``torch.use_deterministic_algorithms``,
one thread; 2800 steps, 526 s on the clock on a shared 2-core machine at nice 10 with a load of
about 4, 27 minutes with a load of 6 to 12):

    .venv/bin/python scripts/train_thinking_model.py

It writes
    pipeline/assets/thinking_model/                    config, fp32 safetensors, generation config,
                                                       tokenizer, chat_template.jinja
    pipeline/assets/datasets/thinking_addition.jsonl   200 held-out questions {"id", "prompt", "reference"}
and prints the held-out accuracy of the saved files, reloaded from disk: thinking off, thinking on,
and thinking on under budgets of 0 to 50 reasoning tokens, overall and by column count.

Held out by pair: ``held_out_pairs()`` draws the pairs from their own seeded generator; training
never sees one of them, in either order. ``--assets DIR`` writes under another folder instead.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tiny_training import (TrainingSettings, build_model, deterministic, pad_batch, read_jsonl, save_model,
                           train)

# --- The task -------------------------------------------------------------------------------------

SEED = 0
MAX_DIGITS = 5                     # the longer operand has 1 to 5 digits (columns), as many of each
HELD_OUT = 200                     # pairs kept for thinking_addition.jsonl, never trained on
OFF_SHARE = 0.3                    # of the training examples, this share has thinking switched off
CUT_SHARE = 0.3                    # this share thinks, is cut off after a random number of tokens, answers
BUDGETS = (0, 10, 20, 30, 40, 50)  # reasoning tokens, checked after training (and None: no budget)

# --- Tokenizer and model --------------------------------------------------------------------------

SPECIAL = ["<pad>", "<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_THINKING = THINK_OPEN + "\n\n" + THINK_CLOSE + "\n\n"  # what the template writes when thinking is off
PRINTABLE = [chr(code) for code in range(32, 127)] + ["\n"]

# Qwen3's rules, in this model's markers: enable_thinking (default true) false writes an empty
# thinking block after the generation prompt; earlier assistant turns lose their thinking (a
# `reasoning_content` field, or what precedes </think> in their content).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' %}"
    "{% set content = message.content if message.content is string else '' %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
    "<|assistant|>{{ content }}<|end|>"
    "{% else %}<|{{ message.role }}|>{{ message.content }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
MODEL_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                   tie_word_embeddings=True)
MAX_NEW_TOKENS = 64                # thinking (up to 48 tokens with its tags), "\n\n", 6 digits and <|end|>

# --- Training -------------------------------------------------------------------------------------

STEPS = 2800
BATCH = 32
PEAK_LR = 3e-3
WARMUP_STEPS = 50
WEIGHT_DECAY = 0.01
# One thread: on a busy machine a second one spent 9x the CPU per step waiting on the first (measured:
# 0.26 s against 2.34 s a step with the machine's load at 18); alone on 2 cores it would gain < 2x.
THREADS = 1
SETTINGS = TrainingSettings(STEPS, PEAK_LR, WARMUP_STEPS, WEIGHT_DECAY, log_every=100)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character (and newline); chat markers special, thinking tags plain single tokens."""
    vocab = {token: index for index, token in enumerate(SPECIAL + [THINK_OPEN, THINK_CLOSE] + PRINTABLE)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    core.decoder = decoders.Fuse()  # WordLevel would join tokens with spaces; the text must come back as is
    core.add_special_tokens([AddedToken(token, normalized=False) for token in SPECIAL])
    core.add_tokens([AddedToken(token, normalized=False, special=False) for token in (THINK_OPEN, THINK_CLOSE)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|end|>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        additional_special_tokens=SPECIAL[3:],
                                        model_max_length=MODEL_SHAPE["max_position_embeddings"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def question(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def columns(a: int, b: int) -> int:
    """How many columns the thinking works through: the digits of the longer operand."""
    return max(len(str(a)), len(str(b)))


def reasoning_text(a: int, b: int) -> str:
    """The thinking between the tags: a leading newline, then one fixed-width line per column of the
    longer operand, ones first: "digit+digit+carry=two-digit sum" (a shorter operand's missing digits
    are 0)."""
    lines, carry = [], 0
    for column in range(columns(a, b)):
        x, y = a // 10 ** column % 10, b // 10 ** column % 10
        total = x + y + carry
        lines.append(f"{x}+{y}+{carry}={total:02d}\n")
        carry = total // 10
    return "\n" + "".join(lines)


def check_tokenizer(tokenizer) -> None:
    """Fail early if markers are split up, decoding loses text, or the template drifts from training."""
    messages = [{"role": "user", "content": question(4821, 3907)}]
    on = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert on == "<s><|user|>What is 4821+3907?<|end|><|assistant|>", on
    off = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert off == on + EMPTY_THINKING, off
    assert reasoning_text(4821, 3907) == "\n1+7+0=08\n2+0+0=02\n8+9+0=17\n4+3+1=08\n"
    history = messages + [{"role": "assistant", "content": THINK_OPEN + reasoning_text(4821, 3907) + THINK_CLOSE
                           + "\n\n8728"}, {"role": "user", "content": question(1, 2)}]
    rendered = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
    assert "<|assistant|>8728<|end|>" in rendered and "think" not in rendered, rendered
    text = off + THINK_OPEN + reasoning_text(4821, 3907) + THINK_CLOSE
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    for marker in ["<s>", "<|user|>", "<|end|>", "<|assistant|>", THINK_OPEN, THINK_CLOSE]:
        assert marker in tokens, f"{marker} is not one token in {tokens}"
    assert tokens.count("\n") == 9, tokens
    assert reasoning_text(7, 385) == "\n7+5+0=12\n0+8+1=09\n0+3+0=03\n"
    ids = tokenizer(THINK_OPEN + reasoning_text(12, 34), add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 + 1 + 9 * 2
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == THINK_OPEN + reasoning_text(12, 34)


def draw_pair(rng: random.Random, width: int) -> tuple[int, int]:
    """A pair whose longer operand has `width` digits, the other 1 to `width`, in either order."""
    def number(digits: int) -> int:
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)

    a, b = number(width), number(rng.randint(1, width))
    return (a, b) if rng.random() < 0.5 else (b, a)


def held_out_pairs() -> list[tuple[int, int]]:
    """The evaluation pairs, in order, fixed by SEED; distinct even when swapped. Their column counts
    cycle 1, 2, ..., MAX_DIGITS, so any first N of them (dataset.limit) mix the lengths evenly."""
    rng = random.Random(SEED)
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(pairs) < HELD_OUT:
        a, b = draw_pair(rng, 1 + len(pairs) % MAX_DIGITS)
        if (a, b) not in seen and (b, a) not in seen:
            pairs.append((a, b))
            seen.update({(a, b), (b, a)})
    return pairs


HELD_OUT_SET = {pair for a, b in held_out_pairs() for pair in ((a, b), (b, a))}


def sample_training_pair(rng: random.Random) -> tuple[int, int]:
    while True:
        a, b = draw_pair(rng, rng.randint(1, MAX_DIGITS))
        if (a, b) not in HELD_OUT_SET:
            return a, b


def write_dataset(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "thinking_addition.jsonl", "w", encoding="utf-8") as out:
        for index, (a, b) in enumerate(held_out_pairs()):
            out.write(json.dumps({"id": f"think-{index:03d}", "prompt": question(a, b),
                                  "reference": str(a + b)}) + "\n")


def encode_example(tokenizer, a: int, b: int, mode: str, cut: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one training sequence; labels are -100 except on what the model says.

    mode "on": <think>, the full reasoning, </think>, the answer. "off": the template's empty
    thinking block is prompt, the answer follows. "cut": <think> and the first `cut` reasoning
    tokens, then a forced </think> (not the model's to learn: unlabelled), then the answer."""
    messages = [{"role": "user", "content": question(a, b)}]
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                enable_thinking=mode != "off")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = encode(prompt_text)
    answer = encode("\n\n" + str(a + b)) + [tokenizer.eos_token_id]
    if mode == "off":
        return prompt + answer, [-100] * len(prompt) + answer
    thinking = encode(THINK_OPEN + reasoning_text(a, b))
    if mode == "cut":
        thinking = thinking[:1 + cut]
        forced = encode(THINK_CLOSE)
        return (prompt + thinking + forced + answer,
                [-100] * len(prompt) + thinking + [-100] * len(forced) + answer)
    thinking += encode(THINK_CLOSE)
    return prompt + thinking + answer, [-100] * len(prompt) + thinking + answer


def training_batches(tokenizer):
    """Endless padded batches (input_ids, attention_mask, labels) in a fixed order."""
    rng = random.Random(SEED + 1)
    while True:
        rows = []
        for _ in range(BATCH):
            a, b = sample_training_pair(rng)
            draw = rng.random()
            mode = "off" if draw < OFF_SHARE else "cut" if draw < OFF_SHARE + CUT_SHARE else "on"
            cut = rng.randint(0, len(reasoning_text(a, b)) - 1)  # at least the last reasoning token is missing
            rows.append(encode_example(tokenizer, a, b, mode, cut))
        yield pad_batch(rows, tokenizer.pad_token_id)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of rendered prompts, special tokens dropped (the thinking tags stay)."""
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**encoded, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def answers(model, tokenizer, questions: list[str], thinking: bool, budget: int | None) -> list[str]:
    """Final answers (after </think>) with thinking on or off, and on, at most `budget` reasoning tokens:
    generate <think> and `budget` tokens; where no </think> came, force one; then generate the answer."""
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=False, enable_thinking=thinking) for q in questions]
    if thinking:
        limit = MAX_NEW_TOKENS if budget is None else 1 + budget
        firsts = generate(model, tokenizer, prompts, limit)
        prompts = [prompt + (first.split(THINK_CLOSE)[0] + THINK_CLOSE if first.startswith(THINK_OPEN) else first)
                   for prompt, first in zip(prompts, firsts)]
    return [text.split(THINK_CLOSE)[-1].strip() for text in generate(model, tokenizer, prompts, 8)]


def evaluate(assets: Path) -> None:
    """Reload the saved model and dataset from disk and measure accuracy by thinking mode and budget,
    overall and by column count.

    Exits non-zero if the model misses its purpose: thinking on nearly perfect and clearly better
    than off, accuracy rising with the budget."""
    model = AutoModelForCausalLM.from_pretrained(assets / "thinking_model", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(assets / "thinking_model", local_files_only=True)
    check_tokenizer(tokenizer)
    records = read_jsonl(assets / "datasets" / "thinking_addition.jsonl")
    questions = [record["prompt"] for record in records]
    references = [record["reference"] for record in records]
    widths = [columns(*map(int, q.removeprefix("What is ").removesuffix("?").split("+"))) for q in questions]

    def accuracy(thinking: bool, budget: int | None) -> float:
        right = [answer == reference for answer, reference
                 in zip(answers(model, tokenizer, questions, thinking, budget), references)]
        by_width = {width: sum(r for r, w in zip(right, widths) if w == width) / widths.count(width)
                    for width in sorted(set(widths))}
        label = "off" if not thinking else f"budget {budget}" if budget is not None else "on"
        print(f"  {label:>10}: {sum(right) / len(right):.3f}   by columns "
              + "  ".join(f"{width}: {value:.2f}" for width, value in by_width.items()), flush=True)
        return sum(right) / len(right)

    print("thinking_addition.jsonl, held out:")
    off, on = accuracy(False, None), accuracy(True, None)
    by_budget = {budget: accuracy(True, budget) for budget in BUDGETS}
    # A budget of 10 x k tokens lets the model finish the problems of up to k columns; the rest it
    # answers from the columns it has and a guess, so the accuracy climbs in steps of about a fifth.
    steps = list(by_budget.values())
    falls = any(later < earlier - 0.02 for earlier, later in pairwise(steps))
    if on < 0.7 or off > on - 0.3 or by_budget[50] < on - 0.02 or falls or steps[-1] < steps[0] + 0.5:
        raise SystemExit("the thinking model misses its targets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=Path(__file__).resolve().parents[1] / "pipeline" / "assets",
                        help="folder to write thinking_model/ and datasets/ into (default: pipeline/assets)")
    parser.add_argument("--steps", type=int, default=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    deterministic(SEED, THREADS)

    tokenizer = build_tokenizer()
    check_tokenizer(tokenizer)
    write_dataset(args.assets / "datasets")

    model = build_model(tokenizer, MODEL_SHAPE, MAX_NEW_TOKENS)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; {HELD_OUT} pairs held out")
    started = time.perf_counter()
    train(model, training_batches(tokenizer), replace(SETTINGS, steps=args.steps))
    print(f"training took {time.perf_counter() - started:.1f} s")

    save_model(model, tokenizer, args.assets / "thinking_model")
    evaluate(args.assets)


if __name__ == "__main__":
    main()
