"""What the demo-model training scripts share: a tiny Llama, deterministic set-up, the training loop.

train_demo_model.py, train_tool_model.py and train_vision_model.py differ in their task, tokenizer, data and settings;
everything else lives here, so both train the same way and re-running either gives byte-identical
weights (fixed seeds, deterministic algorithms, a fixed number of threads). Not part of the
package: the scripts import it as their sibling.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

# input_ids, attention_mask, labels; optionally a fourth item, a dict of further model inputs (pixel_values)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]


@dataclass(frozen=True)
class TrainingSettings:
    steps: int
    peak_lr: float
    warmup_steps: int
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    log_every: int = 50


def deterministic(seed: int, threads: int) -> None:
    """Seeds, thread count and deterministic kernels: the same run gives the same bytes."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    transformers_logging.disable_progress_bar()


def build_model(tokenizer, shape: dict, max_new_tokens: int) -> LlamaForCausalLM:
    """A randomly initialised Llama of `shape` for the tokenizer, greedy with `max_new_tokens` by default."""
    config = LlamaConfig(vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id,
                                               do_sample=False, max_new_tokens=max_new_tokens)
    return model


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-pad to the longest row: positions start at 0 in every row, as in a left-padded generate()."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])
    lengths = torch.tensor([len(ids) for ids, _ in rows])
    attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return input_ids, attention_mask, labels


def learning_rate(step: int, settings: TrainingSettings) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return settings.peak_lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.peak_lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, batches: Iterator[Batch], settings: TrainingSettings) -> None:
    """AdamW over `settings.steps` batches; the loss only where labels are not -100."""
    # no weight decay on norms: it would only pull their gains towards zero
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": settings.weight_decay},
                                   {"params": plain, "weight_decay": 0.0}], lr=settings.peak_lr, betas=(0.9, 0.98))
    model.train()
    started = time.perf_counter()
    for step, batch in zip(range(settings.steps), batches):
        input_ids, attention_mask, labels = batch[:3]
        extra = batch[3] if len(batch) > 3 else {}
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        # token t predicts token t+1; label smoothing is why the loss is computed here, not by the model
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100, label_smoothing=settings.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % settings.log_every == 0 or step == settings.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  lr {learning_rate(step, settings):.2e}  "
                  f"{time.perf_counter() - started:6.1f} s", flush=True)
    model.eval()


def save_model(model, tokenizer, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)  # no stale files from an earlier layout
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)  # writes chat_template.jinja next to the tokenizer files


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]
