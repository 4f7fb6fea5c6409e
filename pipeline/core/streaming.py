"""What every backend shares about sampling and streaming: each answer's own seed, and the stream sink.

`sample_seed` gives each answer (a sample, one of its k completions, a step after a tool round) a
seed of its own, so a backend that honours per-request seeds gives the same output whatever the
batch. `StreamSink` is where generated text goes as it arrives. The transformers backend's
sampling inside `model.generate` is pipeline.backends.transformers.sampling.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol


class StreamSink(Protocol):
    """Receives text as it is generated: the terminal chat prints it, a progress display counts it.

    `streams_text` False says the sink needs only `on_complete`: the text of each new token is then
    not decoded at every step, which keeps a progress display free. A sink without it gets the text.
    A sink may also have `on_tool(name, arguments, result, ok)`, told after each tool call runs."""

    streams_text: bool

    def on_text(self, row: int, text: str) -> None: ...

    def on_complete(self, row: int, text: str) -> None: ...


class RowSink:
    """A sink for part of a batch (the rows split off by settings, not refused, or not in the response
    cache): told its rows as numbered in the whole batch; `on_reasoning` and `on_tool` pass through where
    the sink has them."""

    def __init__(self, sink: StreamSink, rows: list[int]) -> None:
        self.sink, self.rows = sink, rows
        self.streams_text = getattr(sink, "streams_text", True)

    def on_text(self, row: int, text: str) -> None:
        self.sink.on_text(self.rows[row], text)

    def on_complete(self, row: int, text: str) -> None:
        self.sink.on_complete(self.rows[row], text)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.sink, name)
        return (lambda row, text: found(self.rows[row], text)) if name == "on_reasoning" else found


def sample_seed(seed: int, sample_id: str, sample_index: int) -> int:
    """A 63-bit seed for one sample (and one of its k samples), independent of batching."""
    digest = hashlib.sha256(f"{seed}\x00{sample_id}\x00{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
