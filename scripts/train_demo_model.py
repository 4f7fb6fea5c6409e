"""Train the project's embedded demo model: a tiny character-level Llama that adds two-digit numbers.

The pipeline ships this model (alias ``demo``) and its evaluation sets so that a run is meaningful
without downloading anything: greedy decoding gets nearly every sum right, while sampling at a high
temperature visibly does not, so comparing decoding settings shows a real difference.

Run from the repository root (about 3-4 minutes on 2 CPU cores, fully deterministic):

    .venv/bin/python scripts/train_demo_model.py

It writes
    pipeline/assets/demo_model/                  config, fp32 safetensors, generation config, tokenizer
    pipeline/assets/datasets/addition.jsonl      200 held-out questions  {"id", "prompt", "reference"}
    pipeline/assets/datasets/addition_chat.jsonl 20 of them as chat      {"id", "messages", "reference"}
and prints the held-out accuracy of the saved files, reloaded from disk, under greedy decoding and
under sampling at temperature 1.5, with and without a system prompt.

``--assets DIR`` writes under another folder instead (used to check that two runs are byte-identical).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tiny_training import TrainingSettings, build_model, deterministic, pad_batch, read_jsonl, save_model, train
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

# --- The task -------------------------------------------------------------------------------------

SEED = 0
OPERANDS = range(10, 100)          # a and b are both two-digit numbers: 90 * 90 = 8100 pairs
HELD_OUT = 200                     # pairs kept for addition.jsonl, never trained on
CHAT_RECORDS = 20                  # the first held-out pairs, again, as chat messages
CHAT_SYSTEM = "You are a careful calculator."
CHECK_SYSTEM = "You are a concise math tutor."  # not among the training prompts: a fair robustness check

# About half of the training examples carry a system message, so that whatever system prompt a user
# sets does not throw the model off. The exact text matters little; variety does.
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "Answer with a number only.",
    "You are a calculator.",
    "Be brief.",
    "You are a friendly AI that helps with homework.",
    "Reply in as few characters as possible.",
    "You are an expert mathematician.",
    "Think carefully, then give the final answer.",
    "Always answer the user's question.",
    "You are a pirate. Arr!",
    "Respond in English.",
    "Do not explain your reasoning.",
    "You are a bot running a quick arithmetic quiz.",
    "Output only digits.",
    "Be accurate; mistakes are costly.",
    "You are ChatBot v2 (internal build 0.9).",
    "Keep answers short and correct.",
    "The user is a student learning to add.",
    "System: follow instructions exactly.",
    "Today is Monday. You are a polite assistant.",
]
# Curriculum: the share of examples with a system message rises from 0 to SYSTEM_SHARE_MAX over the
# first SYSTEM_RAMP of training, then holds, so that 0.8 * (1/3 + 1/3) = 53% of all examples carry
# one. Learning where the digits are is much faster in short, uniform sequences (with prompts mixed
# in from the start, the same budget reached only ~40% accuracy); the prompts come once it has.
SYSTEM_SHARE_MAX = 0.8
SYSTEM_RAMP = 2 / 3
RANDOM_SYSTEM_SHARE = 0.25         # of the examples that have a system message, this share gets noise
RANDOM_SYSTEM_MAX_LEN = 60

# --- Tokenizer and model --------------------------------------------------------------------------

SPECIAL = ["<pad>", "<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PRINTABLE = [chr(code) for code in range(32, 127)]  # space through "~"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MODEL_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                   tie_word_embeddings=True)

# --- Training -------------------------------------------------------------------------------------

STEPS = 1600
BATCH = 64
BUCKET = 8                          # batches drawn at once and grouped by length
PEAK_LR = 1e-3
WARMUP_STEPS = 60
WEIGHT_DECAY = 0.01
LABEL_SMOOTHING = 0.1              # keeps the answer distribution from collapsing to one-hot, so that
                                   # sampling at temperature 1.5 makes visibly more mistakes than greedy
THREADS = 2
SETTINGS = TrainingSettings(STEPS, PEAK_LR, WARMUP_STEPS, WEIGHT_DECAY, LABEL_SMOOTHING, log_every=100)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable character, plus the chat markers as single special tokens."""
    vocab = {token: index for index, token in enumerate(SPECIAL + PRINTABLE)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # every character alone
    core.decoder = decoders.Fuse()  # WordLevel would join tokens with spaces; the text must come back as is
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|end|>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        additional_special_tokens=SPECIAL[3:],
                                        model_max_length=MODEL_SHAPE["max_position_embeddings"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def check_tokenizer(tokenizer) -> None:
    """Fail early if the chat markers are split up or decoding does not give the text back."""
    messages = [{"role": "system", "content": "Be  brief!"}, {"role": "user", "content": "What is 23+45?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    for marker in SPECIAL[2:]:
        assert marker in tokens, f"{marker} is not one token in {tokens}"
    assert len(tokens) == len("Be  brief!") + len("What is 23+45?") + 6, tokens
    ids = tokenizer("What is 23+45?", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "What is 23+45?"


def split_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(training pairs, held-out pairs in evaluation order), fixed by SEED."""
    pairs = [(a, b) for a in OPERANDS for b in OPERANDS]
    held_out = random.Random(SEED).sample(pairs, HELD_OUT)
    chosen = set(held_out)
    train_pairs = [pair for pair in pairs if pair not in chosen]
    assert len(train_pairs) == len(pairs) - HELD_OUT
    return train_pairs, held_out


def question(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def write_datasets(folder: Path, held_out: list[tuple[int, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "addition.jsonl", "w", encoding="utf-8") as out:
        for index, (a, b) in enumerate(held_out):
            out.write(json.dumps({"id": f"add-{index:03d}", "prompt": question(a, b),
                                  "reference": str(a + b)}) + "\n")
    with open(folder / "addition_chat.jsonl", "w", encoding="utf-8") as out:
        for index, (a, b) in enumerate(held_out[:CHAT_RECORDS]):
            messages = [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": question(a, b)}]
            out.write(json.dumps({"id": f"chat-{index:02d}", "messages": messages,
                                  "reference": str(a + b)}) + "\n")


def system_share(step: int) -> float:
    """The chance that an example at this training step has a system message."""
    return SYSTEM_SHARE_MAX * min(1.0, step / (SYSTEM_RAMP * STEPS))


def random_system_prompt(rng: random.Random, share: float) -> str | None:
    """None, or (with chance share) a plausible prompt, or now and then printable noise."""
    if rng.random() >= share:
        return None
    if rng.random() < RANDOM_SYSTEM_SHARE:
        return "".join(rng.choice(PRINTABLE) for _ in range(rng.randint(0, RANDOM_SYSTEM_MAX_LEN)))
    return rng.choice(SYSTEM_PROMPTS)


def prompt_text(tokenizer, a: int, b: int, system: str | None) -> str:
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    messages.append({"role": "user", "content": question(a, b)})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_example(tokenizer, a: int, b: int, system: str | None) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one training sequence.

    The sequence is the rendered chat up to <|assistant|>, then the answer digits and <|end|>;
    labels are -100 except on those answer tokens, so the model learns only to answer."""
    prompt = tokenizer(prompt_text(tokenizer, a, b, system), add_special_tokens=False)["input_ids"]
    answer = tokenizer(str(a + b), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


def training_batches(tokenizer, pairs: list[tuple[int, int]]):
    """Endless padded batches (input_ids, attention_mask, labels) in a fixed order.

    Sequences with a long system prompt are 4x longer than those without; grouping similar lengths
    (BUCKET batches at a time) roughly halves the padding computed, then the group's batches are
    shuffled so that lengths do not come in order."""
    rng = random.Random(SEED + 1)
    order: list[tuple[int, int]] = []
    step = 0
    while True:
        while len(order) < BATCH * BUCKET:
            epoch = list(pairs)
            rng.shuffle(epoch)
            order.extend(epoch)
        chunk, order = order[:BATCH * BUCKET], order[BATCH * BUCKET:]
        share = system_share(step)
        rows = sorted((encode_example(tokenizer, a, b, random_system_prompt(rng, share)) for a, b in chunk),
                      key=lambda row: len(row[0]))
        batches = [rows[start:start + BATCH] for start in range(0, len(rows), BATCH)]
        rng.shuffle(batches)
        for batch in batches:
            yield pad_batch(batch, tokenizer.pad_token_id)
        step += BUCKET


def accuracy(model, tokenizer, conversations: list[list[dict]], references: list[str],
             temperature: float | None) -> float:
    """Exact-match accuracy of plain model.generate: greedy if temperature is None, else sampled."""
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    prompts = [tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
               for messages in conversations]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    options = dict(do_sample=False) if temperature is None else dict(do_sample=True, temperature=temperature)
    torch.manual_seed(SEED)  # the sampled accuracy is reproducible too
    with torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=8, **options)
    answers = tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(answer.strip() == reference for answer, reference in zip(answers, references)) / len(references)


def evaluate(assets: Path) -> None:
    """Reload the saved model and datasets from disk, as the pipeline will, and measure accuracy.

    Exits non-zero if the model misses its purpose: greedy must be nearly perfect, with or without
    a system prompt, and sampling at temperature 1.5 clearly worse."""
    model = AutoModelForCausalLM.from_pretrained(assets / "demo_model", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(assets / "demo_model", local_files_only=True)
    check_tokenizer(tokenizer)
    records = read_jsonl(assets / "datasets" / "addition.jsonl")
    references = [record["reference"] for record in records]
    for system in (None, CHECK_SYSTEM):
        conversations = [([{"role": "system", "content": system}] if system else [])
                         + [{"role": "user", "content": record["prompt"]}] for record in records]
        greedy = accuracy(model, tokenizer, conversations, references, None)
        sampled = accuracy(model, tokenizer, conversations, references, 1.5)
        label = "no system prompt" if system is None else f"system prompt {system!r}"
        print(f"addition.jsonl ({label}): greedy {greedy:.3f}, temperature 1.5 {sampled:.3f}")
        if greedy < 0.95 or sampled > greedy - 0.1:
            raise SystemExit(f"the demo model misses its targets ({label}): greedy {greedy:.3f} should be "
                             f">= 0.95 and temperature 1.5 {sampled:.3f} at least 0.1 lower")
    chats = read_jsonl(assets / "datasets" / "addition_chat.jsonl")
    greedy = accuracy(model, tokenizer, [chat["messages"] for chat in chats],
                      [chat["reference"] for chat in chats], None)
    print(f"addition_chat.jsonl (messages): greedy {greedy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=Path(__file__).resolve().parents[1] / "pipeline" / "assets",
                        help="folder to write demo_model/ and datasets/ into (default: pipeline/assets)")
    args = parser.parse_args()

    deterministic(SEED, THREADS)

    tokenizer = build_tokenizer()
    check_tokenizer(tokenizer)
    train_pairs, held_out = split_pairs()
    write_datasets(args.assets / "datasets", held_out)

    model = build_model(tokenizer, MODEL_SHAPE, max_new_tokens=8)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"training on {len(train_pairs)} pairs, {HELD_OUT} held out")
    started = time.perf_counter()
    train(model, training_batches(tokenizer, train_pairs), SETTINGS)
    print(f"training took {time.perf_counter() - started:.1f} s")

    save_model(model, tokenizer, args.assets / "demo_model")
    evaluate(args.assets)


if __name__ == "__main__":
    main()
