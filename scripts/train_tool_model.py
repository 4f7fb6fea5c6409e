"""Train the project's second demo model: a tiny character-level Llama that adds four-digit numbers by
calling a calculator tool.

Four-digit sums are beyond a model this small, but copying digits is not. So when the chat offers the
``add`` tool the model answers with a tool call, reads the tool's result and repeats it, and nearly
every answer is right; offered no tools, it must answer from its own weights and is mostly wrong.
An experiment that toggles tools therefore shows a large, real difference in accuracy.

The conversation, as rendered by the model's chat template (one token per character, markers are
single tokens; ``<|end|>`` is the end-of-turn / eos token):

    <s><|system|>tools: add<|end|><|user|>What is 4821+3907?<|end|><|assistant|>
    <tool_call>{"name": "add", "arguments": {"a": 4821, "b": 3907}}</tool_call><|end|>     (model)
    <|tool|>8728<|end|><|assistant|>
    8728<|end|>                                                                         (model)

Without tools the ``<|system|>tools: ...<|end|>`` line is absent and the model answers a number directly.

A share of the training conversations ask two questions, so the model also calls the tool for a
second question after a first exchange (the terminal chat and scripted conversations need that).

Run from the repository root (about 10 minutes on 2 CPU cores, deterministic: fixed seeds,
``torch.use_deterministic_algorithms``, 2 threads):

    .venv/bin/python scripts/train_tool_model.py

It writes
    pipeline/assets/tool_model/                   config, fp32 safetensors, generation config, tokenizer,
                                                  chat_template.jinja
    pipeline/assets/datasets/tool_addition.jsonl  100 held-out questions  {"id", "prompt", "reference"}
and prints the held-out accuracy of the saved files, reloaded from disk, with and without tools.

Held out by pair: ``held_out_pairs()`` draws HELD_OUT pairs (a, b) from their own seeded generator;
``sample_training_pair()`` rejects any pair whose (a, b) or (b, a) is among them, so no held-out
question (in either order) is ever a training example.

``--assets DIR`` writes under another folder instead.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import replace
from pathlib import Path

import torch
from tiny_training import TrainingSettings, build_model, deterministic, pad_batch, read_jsonl, save_model, train
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

# --- The task -------------------------------------------------------------------------------------

SEED = 0
LOW, HIGH = 1000, 9999             # both operands are four-digit numbers
HELD_OUT = 100                     # pairs kept for tool_addition.jsonl, never trained on
NO_TOOLS_SHARE = 0.3               # of the training examples, this share offers no tools: answer directly
SYSTEM_SHARE = 0.25                # this share carries a (short) user system prompt as well
TWO_TURN_SHARE = 0.3               # this share is a conversation of two questions, the second after the first
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a calculator.",
    "Be brief.",
    "Answer with a number only.",
    "Use tools when they help.",
    "You are a careful calculator.",
    "Keep answers short and correct.",
    "Respond in English.",
]

# The schema a caller passes as tools=[ADD_TOOL]; the template only shows the names of the tools.
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}

# --- Tokenizer and model --------------------------------------------------------------------------

SPECIAL = ["<pad>", "<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"]
# Single tokens, but not "special": decode(..., skip_special_tokens=True) keeps them, so the decoded
# answer is the full "<tool_call>{...}</tool_call>" text that a tool-call parser looks for.
TOOL_MARKERS = ["<tool_call>", "</tool_call>"]
PRINTABLE = [chr(code) for code in range(32, 127)]  # space through "~"

# Tool calls render as <tool_call>{"name": ..., "arguments": {...}}</tool_call>, json.dumps spacing
# (", " and ": "), keys in the order given. Arguments given as a JSON string (OpenAI style) are used as is.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>tools: "
    "{% for tool in tools %}{% if not loop.first %}, {% endif %}"
    "{{ tool.function.name if tool.function is defined else tool.name }}{% endfor %}<|end|>"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' %}<|assistant|>"
    "{% if message.content is string %}{{ message.content }}{% endif %}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}"
    "{% set function = call.function if call.function is defined else call %}"
    "<tool_call>{\"name\": {{ function.name | tojson }}, \"arguments\": "
    "{% if function.arguments is string %}{{ function.arguments }}"
    "{% else %}{{ function.arguments | tojson }}{% endif %}}</tool_call>"
    "{% endfor %}{% endif %}<|end|>"
    "{% else %}<|{{ message.role }}|>{{ message.content }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MODEL_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                   tie_word_embeddings=True)
MAX_NEW_TOKENS = 64                # a tool call is 60 tokens with its markers and <|end|>

# --- Training -------------------------------------------------------------------------------------

STEPS = 900
BATCH = 48
PEAK_LR = 2e-3
WARMUP_STEPS = 50
WEIGHT_DECAY = 0.01
THREADS = 2
SETTINGS = TrainingSettings(STEPS, PEAK_LR, WARMUP_STEPS, WEIGHT_DECAY)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character; chat markers and tool-call markers are single tokens."""
    vocab = {token: index for index, token in enumerate(SPECIAL + TOOL_MARKERS + PRINTABLE)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character alone
    core.decoder = decoders.Fuse()  # WordLevel would join tokens with spaces; the text must come back as is
    core.add_special_tokens([AddedToken(token, normalized=False) for token in SPECIAL])
    core.add_tokens([AddedToken(token, normalized=False, special=False) for token in TOOL_MARKERS])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|end|>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        additional_special_tokens=SPECIAL[3:],
                                        model_max_length=MODEL_SHAPE["max_position_embeddings"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def question(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def tool_call_text(a: int, b: int) -> str:
    """Exactly what the model emits for a call (and what the template renders for tool_calls)."""
    return "<tool_call>" + json.dumps({"name": "add", "arguments": {"a": a, "b": b}}) + "</tool_call>"


def tool_call_message(a: int, b: int) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}]}


TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def parse_tool_calls(text: str) -> list[dict]:
    """The {"name", "arguments"} objects in a generated answer; malformed JSON is skipped."""
    calls = []
    for body in TOOL_CALL.findall(text):
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            continue
        if isinstance(call, dict) and isinstance(call.get("arguments"), dict):
            calls.append(call)
    return calls


def check_tokenizer(tokenizer) -> None:
    """Fail early if markers are split up, decoding loses text, or the template drifts from training."""
    messages = [{"role": "system", "content": "Be  brief!"}, {"role": "user", "content": question(4821, 3907)},
                tool_call_message(4821, 3907), {"role": "tool", "content": "8728"}]
    text = tokenizer.apply_chat_template(messages, tools=[ADD_TOOL], add_generation_prompt=True, tokenize=False)
    expected = ("<s><|system|>tools: add<|end|><|system|>Be  brief!<|end|><|user|>What is 4821+3907?<|end|>"
                "<|assistant|>" + tool_call_text(4821, 3907) + "<|end|><|tool|>8728<|end|><|assistant|>")
    assert text == expected, text
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    for marker in SPECIAL[2:] + TOOL_MARKERS:
        assert marker in tokens, f"{marker} is not one token in {tokens}"
    plain = tokenizer.apply_chat_template(messages[1:2], add_generation_prompt=True, tokenize=False)
    assert plain == "<s><|user|>What is 4821+3907?<|end|><|assistant|>", plain
    # OpenAI-style string arguments render the same
    string_args = [dict(messages[2], tool_calls=[{"type": "function", "function": {
        "name": "add", "arguments": json.dumps({"a": 4821, "b": 3907})}}])]
    assert tool_call_text(4821, 3907) in tokenizer.apply_chat_template(string_args, tokenize=False)
    ids = tokenizer(tool_call_text(12, 34), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == tool_call_text(12, 34)


def held_out_pairs() -> list[tuple[int, int]]:
    """The evaluation pairs, in order, fixed by SEED; distinct even when swapped."""
    rng = random.Random(SEED)
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(pairs) < HELD_OUT:
        a, b = rng.randint(LOW, HIGH), rng.randint(LOW, HIGH)
        if (a, b) not in seen and (b, a) not in seen:
            pairs.append((a, b))
            seen.update({(a, b), (b, a)})
    return pairs


HELD_OUT_SET = {pair for a, b in held_out_pairs() for pair in ((a, b), (b, a))}


def is_training_pair(a: int, b: int) -> bool:
    return LOW <= a <= HIGH and LOW <= b <= HIGH and (a, b) not in HELD_OUT_SET


def sample_training_pair(rng: random.Random) -> tuple[int, int]:
    while True:
        a, b = rng.randint(LOW, HIGH), rng.randint(LOW, HIGH)
        if is_training_pair(a, b):
            return a, b


def write_dataset(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tool_addition.jsonl", "w", encoding="utf-8") as out:
        for index, (a, b) in enumerate(held_out_pairs()):
            out.write(json.dumps({"id": f"tool-{index:03d}", "prompt": question(a, b),
                                  "reference": str(a + b)}) + "\n")


def encode_example(tokenizer, pairs: list[tuple[int, int]], tools: bool, system: str | None
                   ) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one training conversation; labels are -100 except on what the model says.

    One question per pair, each after the earlier ones and their answers. With tools: the tool call +
    <|end|>, then (after the tool's result) the number + <|end|>. Without tools: the number + <|end|>.
    Every prefix is rendered by the chat template itself, so training sees exactly the text that
    apply_chat_template gives at inference."""
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    tool_list = [ADD_TOOL] if tools else None
    turns = []  # (the conversation so far, what the model says next)
    for a, b in pairs:
        messages.append({"role": "user", "content": question(a, b)})
        if tools:
            turns.append((list(messages), tool_call_text(a, b)))
            messages += [tool_call_message(a, b), {"role": "tool", "content": str(a + b)}]
        turns.append((list(messages), str(a + b)))
        messages.append({"role": "assistant", "content": str(a + b)})
    ids: list[int] = []
    labels: list[int] = []
    for history, answer in turns:
        text = tokenizer.apply_chat_template(history, tools=tool_list, add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert prompt[:len(ids)] == ids, "the template must render earlier turns as the model produced them"
        new = prompt[len(ids):]
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = ids + new + target
        labels = labels + [-100] * len(new) + target
    return ids, labels


def training_batches(tokenizer):
    """Endless padded batches (input_ids, attention_mask, labels) in a fixed order."""
    rng = random.Random(SEED + 1)
    while True:
        rows = []
        for _ in range(BATCH):
            pairs = [sample_training_pair(rng) for _ in range(2 if rng.random() < TWO_TURN_SHARE else 1)]
            tools = rng.random() >= NO_TOOLS_SHARE
            system = rng.choice(SYSTEM_PROMPTS) if rng.random() < SYSTEM_SHARE else None
            rows.append(encode_example(tokenizer, pairs, tools, system))
        yield pad_batch(rows, tokenizer.pad_token_id)


def generate(model, tokenizer, conversations: list[list[dict]], tools: list[dict] | None) -> list[str]:
    """Greedy answers, decoded with skip_special_tokens=True (tool-call markers survive that)."""
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    prompts = [tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
               for messages in conversations]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**encoded, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    return tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)


def run_with_tools(model, tokenizer, prompts: list[str], histories: list[list[dict]] | None = None
                   ) -> tuple[list[str], int]:
    """Final answers of the tool loop (one call round) after each history (none by default), and how
    many first answers were a valid add call."""
    conversations = [list(history) + [{"role": "user", "content": prompt}]
                     for history, prompt in zip(histories or [[] for _ in prompts], prompts)]
    first = generate(model, tokenizer, conversations, [ADD_TOOL])
    valid = 0
    for conversation, answer in zip(conversations, first):
        calls = parse_tool_calls(answer)
        call = calls[0] if calls else None
        arguments = call["arguments"] if call else {}
        if call and call.get("name") == "add" and isinstance(arguments.get("a"), int) \
                and isinstance(arguments.get("b"), int) and answer.strip() == TOOL_CALL.search(answer).group(0):
            valid += 1
            result = str(arguments["a"] + arguments["b"])
            conversation += [{"role": "assistant", "content": "",
                              "tool_calls": [{"type": "function", "function": call}]},
                             {"role": "tool", "content": result}]
        else:
            conversation.append({"role": "assistant", "content": answer})
    pending = [index for index, conversation in enumerate(conversations) if conversation[-1]["role"] == "tool"]
    finals = list(first)
    if pending:
        for index, answer in zip(pending, generate(model, tokenizer, [conversations[i] for i in pending],
                                                   [ADD_TOOL])):
            finals[index] = answer
    return finals, valid


def evaluate(assets: Path) -> None:
    """Reload the saved model and dataset from disk and measure accuracy with and without the tool.

    Exits non-zero if the model misses its purpose: nearly perfect with the tool, clearly worse without."""
    model = AutoModelForCausalLM.from_pretrained(assets / "tool_model", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(assets / "tool_model", local_files_only=True)
    check_tokenizer(tokenizer)
    records = read_jsonl(assets / "datasets" / "tool_addition.jsonl")
    prompts = [record["prompt"] for record in records]
    references = [record["reference"] for record in records]
    finals, valid = run_with_tools(model, tokenizer, prompts)
    with_tools = sum(answer.strip() == ref for answer, ref in zip(finals, references)) / len(records)
    direct = generate(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], None)
    numeric = sum(answer.strip().isdigit() for answer in direct) / len(records)
    without = sum(answer.strip() == ref for answer, ref in zip(direct, references)) / len(records)
    # a second question after the first one's whole exchange (call, result, answer)
    firsts = [[{"role": "user", "content": prompt}, tool_call_message(*map(int, re.findall(r"\d+", prompt))),
               {"role": "tool", "content": ref}, {"role": "assistant", "content": ref}]
              for prompt, ref in zip(prompts, references)]
    seconds, _ = run_with_tools(model, tokenizer, prompts[1:] + prompts[:1], firsts)
    second_turn = sum(a.strip() == r for a, r in zip(seconds, references[1:] + references[:1])) / len(records)
    print(f"tool_addition.jsonl: with tools {with_tools:.3f} (valid add calls {valid}/{len(records)}), "
          f"as a second turn {second_turn:.3f}, without tools {without:.3f} (numeric answers {numeric:.3f})")
    if with_tools < 0.95 or second_turn < 0.9 or numeric < 0.95 or without > with_tools - 0.3:
        raise SystemExit("the tool model misses its targets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=Path(__file__).resolve().parents[1] / "pipeline" / "assets",
                        help="folder to write tool_model/ and datasets/ into (default: pipeline/assets)")
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

    save_model(model, tokenizer, args.assets / "tool_model")
    evaluate(args.assets)


if __name__ == "__main__":
    main()
