"""Counting a local model folder's tokens for any backend kind: its tokenizer.json through the light
`tokenizers` library (pipeline.data.chat_template.TokenCounter), or, for a folder without one
(sentencepiece, a vocabulary to build from), the transformers tokenizer itself.

Here, not in pipeline.data, because the fallback imports transformers, which nothing above
pipeline/backends/ may; it does not load a model or import torch's kernels for it."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import UserError, one_line
from pipeline.data.chat_template import TokenCounter


def token_counter(folder: Path) -> TokenCounter:
    return TokenCounter.from_folder(Path(folder), fallback=_from_transformers)


def _from_transformers(folder: Path) -> TokenCounter:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the tokenizer in {folder}: {one_line(str(error))}") from None

    def encode(text: str, add_special_tokens: bool) -> int:
        return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    return TokenCounter(encode, exact=True, origin=str(folder))
