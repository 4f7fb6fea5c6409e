"""Build a tiny random-weight causal LM folder on disk, for tests that need a model but not the demo.

Character-level tokenizer with a chat template, a 2-layer Llama with random weights: it loads
and generates like any local model folder, in well under a second.
"""

from __future__ import annotations

import string
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<pad>", "<unk>", "<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def build_tiny_model(folder: Path, context_length: int = 128, chat_template: bool = True, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + list(string.printable[:95]))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|end|>",
                                        pad_token="<pad>", unk_token="<unk>",
                                        additional_special_tokens=SPECIAL[3:])
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=context_length,
                         bos_token_id=vocab["<s>"], eos_token_id=vocab["<|end|>"], pad_token_id=0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def overlap_two_tensors(weights: Path) -> None:
    """Corrupt a safetensors file so that only safetensors itself notices: two same-shape tensors share bytes.

    The header stays valid JSON and the sizes add up, so resolve accepts the file; loading refuses it."""
    import json
    import struct

    data = weights.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    names = [n for n in header if n != "__metadata__"]
    first, second = next((a, b) for a in names for b in names
                         if a < b and header[a]["shape"] == header[b]["shape"])
    header[second]["data_offsets"] = header[first]["data_offsets"]
    raw = json.dumps(header).encode().ljust(size)
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size:])
