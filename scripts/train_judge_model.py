"""Train the project's demo judge: a tiny character-level Llama that grades the demo model's sums.

The judge reads what `scoring=judge` shows it by default (conf/scoring/judge.yaml, JUDGE_PROMPT in
pipeline/core/config.py), through its chat template, and answers with a grade word and a short reason:

    <s><|user|>Question: What is 86+87?\\nReference: 173\\nAnswer: 172\\nVerdict:<|end|><|assistant|>
    incorrect: expected 173<|end|>                                                        (judge)

"correct" when the answer, white space around it aside, is the reference (what exact_match says):
a judge whose grades can be checked against a string scorer, so that their agreement means something.

The answers it learns from are the demo model's own (pipeline/assets/demo_model, generated here at
temperatures from greedy to 2.0, so its usual mistakes are there) to the questions the demo model was
trained on, plus near misses made up from the reference (a digit changed, dropped or added, digits
swapped, junk around the number, white space around a right answer; a changed digit three times as
often as the others). The demo model's held-out
questions (addition.jsonl) are never shown to the judge: `evaluate` grades the demo model's answers to
them, at the temperatures of `+experiment=judge`, and compares the judge with exact match.

It also prints how many held-out answers one off the reference the judge calls incorrect: few (4 of
200 for the shipped judge). A model this small, trained this briefly, learns what a right answer
looks like more than it compares digits; docs/judges.md shows where that makes it disagree.

Run from the repository root (deterministic: fixed seeds, deterministic kernels, one thread; 1400
steps took 1719 s on the clock at nice 10 on a shared 2-core machine with a load of 8 to 11):

    nice -n 10 .venv/bin/python scripts/train_judge_model.py

It writes pipeline/assets/judge_model/ (config, fp32 safetensors, generation config, tokenizer,
chat_template.jinja). ``--assets DIR`` writes under another folder instead (the demo model and its
dataset are read from pipeline/assets either way).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from tiny_training import TrainingSettings, build_model, deterministic, pad_batch, read_jsonl, save_model, train
from train_demo_model import CHAT_TEMPLATE, MODEL_SHAPE, PRINTABLE, SPECIAL
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

SEED = 0
ASSETS = Path(__file__).resolve().parents[1] / "pipeline" / "assets"
OPERANDS = range(10, 100)  # the demo model's task: two two-digit numbers
HELD_OUT = 200  # the demo model's held-out pairs (train_demo_model.split_pairs): never shown to the judge
DEMO_TEMPERATURES = (None, 0.7, 1.0, 1.5, 2.0)  # None: greedy; the demo model's answers at each
DEMO_PAIRS = 1500  # training pairs whose demo answers are generated at each temperature
EVAL_TEMPERATURES = (None, 0.7, 1.5)  # +experiment=judge's

# the demo model's vocabulary of specials, chat template and shape: the judge is the same kind of tiny Llama
CHARACTERS = PRINTABLE + ["\n"]  # printable ASCII and the newline of the prompt
STEPS = 1400
BATCH = 32
THREADS = 1
SETTINGS = TrainingSettings(STEPS, peak_lr=1e-3, warmup_steps=60, weight_decay=0.01, label_smoothing=0.0,
                            log_every=50)
MAX_NEW_TOKENS = 48
# the kinds of made-up answer (near_miss), a digit changed three times as often as the others: the hardest to see
NEAR_MISS_KINDS = (0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, plus the chat markers as single special tokens (as the demo model's)."""
    vocab = {token: index for index, token in enumerate(SPECIAL + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|end|>",
                                        pad_token="<pad>", unk_token="<unk>", additional_special_tokens=SPECIAL[3:],
                                        model_max_length=MODEL_SHAPE["max_position_embeddings"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def judge_prompt(question: str, reference: str, answer: str) -> str:
    """The default judge prompt (pipeline.core.config.JUDGE_PROMPT without a rubric), rendered."""
    return f"Question: {question}\nReference: {reference}\nAnswer: {answer}\nVerdict:"


def verdict(reference: str, answer: str) -> str:
    """What the judge is taught to say: exact match's grade, white space aside, and its reason."""
    if answer.strip() == reference:
        return f"correct: {reference} matches"
    return f"incorrect: expected {reference}"


def split_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(the demo model's training pairs, its held-out pairs): train_demo_model.split_pairs, by the same seed."""
    pairs = [(a, b) for a in OPERANDS for b in OPERANDS]
    held_out = random.Random(0).sample(pairs, HELD_OUT)
    chosen = set(held_out)
    return [pair for pair in pairs if pair not in chosen], held_out


def demo_answers(model, tokenizer, questions: list[str], temperature: float | None, seed: int) -> list[str]:
    """The demo model's answers to the questions (greedy when temperature is None), as the pipeline decodes them."""
    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=False) for q in questions]
    answers = []
    torch.manual_seed(seed)
    for start in range(0, len(prompts), 256):
        encoded = tokenizer(prompts[start:start + 256], return_tensors="pt", padding=True, add_special_tokens=False)
        options = dict(do_sample=False) if temperature is None else dict(do_sample=True, temperature=temperature,
                                                                         top_k=0)
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=8, **options)
        answers += tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def near_miss(rng: random.Random, reference: str) -> str:
    """A made-up answer close to the reference: right with white space, or wrong by a little."""
    digits = list(reference)
    kind = rng.choice(NEAR_MISS_KINDS)
    if kind == 0:
        return rng.choice([" ", "  ", ""]) + reference + rng.choice([" ", "", "\n"])
    if kind == 1:  # one digit changed
        i = rng.randrange(len(digits))
        digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
    elif kind == 2 and len(digits) > 1:  # one digit dropped
        del digits[rng.randrange(len(digits))]
    elif kind == 3:  # one digit added
        digits.insert(rng.randrange(len(digits) + 1), rng.choice("0123456789"))
    elif kind == 4 and len(set(digits)) > 1:  # two digits swapped
        i, j = rng.sample(range(len(digits)), 2)
        digits[i], digits[j] = digits[j], digits[i]
    elif kind == 5:  # junk around the number
        junk = "".join(rng.choice(CHARACTERS[:-1]) for _ in range(rng.randint(1, 3)))
        return reference + junk if rng.random() < 0.5 else junk + reference
    elif kind == 6:  # another number altogether
        return str(rng.randint(0, 250))
    elif kind == 7:
        return ""
    else:  # printable noise
        return "".join(rng.choice(CHARACTERS[:-1]) for _ in range(rng.randint(1, 8)))
    return "".join(digits)


def examples(model, tokenizer, pairs: list[tuple[int, int]]) -> list[tuple[str, str, str]]:
    """(question, reference, answer) triples: the demo model's answers at each temperature, and near misses."""
    rng = random.Random(SEED + 1)
    triples = []
    for index, temperature in enumerate(DEMO_TEMPERATURES):
        chosen = rng.sample(pairs, DEMO_PAIRS)
        questions = [f"What is {a}+{b}?" for a, b in chosen]
        answers = demo_answers(model, tokenizer, questions, temperature, SEED + 10 + index)
        triples += [(q, str(a + b), answer) for q, (a, b), answer in zip(questions, chosen, answers)]
    for a, b in rng.sample(pairs, len(pairs) // 2) * 3:
        triples.append((f"What is {a}+{b}?", str(a + b), near_miss(rng, str(a + b))))
    rng.shuffle(triples)
    return triples


def encode(tokenizer, question: str, reference: str, answer: str) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat up to <|assistant|>, then the verdict and <|end|>; the loss on the verdict only."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": judge_prompt(question, reference, answer)}],
                                         add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    target = tokenizer(verdict(reference, answer), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + target, [-100] * len(prompt) + target


def batches(tokenizer, triples: list[tuple[str, str, str]]):
    """Endless padded batches in a fixed order, correct and incorrect verdicts in about equal numbers."""
    rng = random.Random(SEED + 2)
    right = [t for t in triples if t[2].strip() == t[1]]
    wrong = [t for t in triples if t[2].strip() != t[1]]
    print(f"training examples: {len(right)} correct, {len(wrong)} incorrect answers")
    while True:
        rows = [encode(tokenizer, *rng.choice(right if rng.random() < 0.5 else wrong)) for _ in range(BATCH)]
        yield pad_batch(rows, tokenizer.pad_token_id)


def grade(model, tokenizer, triples: list[tuple[str, str, str]]) -> list[str]:
    """The judge's greedy replies to the triples, reloaded as the pipeline would use it."""
    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": judge_prompt(*t)}],
                                             add_generation_prompt=True, tokenize=False) for t in triples]
    replies = []
    for start in range(0, len(prompts), 128):
        encoded = tokenizer(prompts[start:start + 128], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(**encoded, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        replies += tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    return replies


def evaluate(folder: Path) -> None:
    """The saved judge, reloaded, against exact match on the demo model's answers to its held-out questions."""
    judge = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    demo = AutoModelForCausalLM.from_pretrained(ASSETS / "demo_model", local_files_only=True)
    demo_tokenizer = AutoTokenizer.from_pretrained(ASSETS / "demo_model", local_files_only=True)
    records = read_jsonl(ASSETS / "datasets" / "addition.jsonl")
    agree = total = 0
    for temperature in EVAL_TEMPERATURES:
        answers = demo_answers(demo, demo_tokenizer, [r["prompt"] for r in records], temperature, SEED + 99)
        triples = [(r["prompt"], r["reference"], a) for r, a in zip(records, answers)]
        replies = grade(judge, tokenizer, triples)
        same = sum(reply.split(":")[0].strip() == verdict(ref, answer).split(":")[0]
                   for (_, ref, answer), reply in zip(triples, replies))
        right = sum(answer.strip() == ref for _, ref, answer in triples)
        print(f"held out, demo answers at temperature {temperature or 0}: {right}/{len(triples)} right by exact "
              f"match; the judge agrees on {same}/{len(triples)}")
        agree, total = agree + same, total + len(triples)
    print(f"agreement with exact match on held-out answers: {agree / total:.3f}")
    misses = [(r["prompt"], r["reference"], str(int(r["reference"]) + (1 if i % 2 else -1)))
              for i, r in enumerate(records)]
    caught = sum(reply.startswith("incorrect") for reply in grade(judge, tokenizer, misses))
    print(f"held-out answers one off the reference: the judge calls {caught}/{len(misses)} incorrect")
    if agree / total < 0.95:
        raise SystemExit(f"the demo judge misses its target: agreement {agree / total:.3f} < 0.95")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=ASSETS, help="folder to write judge_model/ into")
    args = parser.parse_args()
    deterministic(SEED, THREADS)
    demo = AutoModelForCausalLM.from_pretrained(ASSETS / "demo_model", local_files_only=True)
    demo_tokenizer = AutoTokenizer.from_pretrained(ASSETS / "demo_model", local_files_only=True)
    train_pairs, _ = split_pairs()
    started = time.perf_counter()
    triples = examples(demo, demo_tokenizer, train_pairs)
    print(f"{len(triples)} examples in {time.perf_counter() - started:.1f} s")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, MODEL_SHAPE, max_new_tokens=MAX_NEW_TOKENS)
    print(f"judge: {sum(p.numel() for p in model.parameters()):,} parameters")
    started = time.perf_counter()
    train(model, batches(tokenizer, triples), SETTINGS)
    print(f"training took {time.perf_counter() - started:.1f} s")
    save_model(model, tokenizer, args.assets / "judge_model")
    evaluate(args.assets / "judge_model")


if __name__ == "__main__":
    main()
