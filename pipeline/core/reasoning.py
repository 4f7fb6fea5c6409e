"""Reasoning kept apart from the answer: reading a model's output into (thinking, final answer).

Three shapes of output are read here:

- thinking tags, ``<think>…</think>`` or the model's own pair (read from its chat template and
  special tokens by `thinking_support`), including a template that opens the block in the prompt
  (the output then starts inside the thinking) and a block that never closes (`truncated`: the
  answer is empty, never the thinking);
- gpt-oss's harmony channels: ``<|channel|>analysis<|message|>…<|end|>`` is reasoning, the ``final``
  channel is the answer (other channels, such as ``commentary``, belong to the answer);
- plain text (no markers): all answer, unchanged.

`StreamSplitter` reads the same output chunk by chunk (a marker may be split across chunks: a tail
that could still become one is held back); `split_reasoning` is that splitter fed the whole text,
so a stream and a finished text always split alike. `thinking_support` says, from a chat template
and the tokenizer's special tokens, whether a model can think and how thinking is switched.

Pure text functions: no tokenizer, no torch, no I/O. Counting reasoning tokens and enforcing a
budget are the backends' (they hold the token ids); a server that returns reasoning in its own
field (``reasoning_content``) needs no splitting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

# Known pairs of thinking tags: (open, close). Qwen3, DeepSeek-R1, QwQ, Phi-4-reasoning, SmolLM3 use
# <think>; others name it differently. Order matters only when a template declares two.
KNOWN_TAGS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<reasoning>", "</reasoning>"),
    ("<seed:think>", "</seed:think>"),
    ("◁think▷", "◁/think▷"),
)
# gpt-oss (harmony format)
CHANNEL, MESSAGE = "<|channel|>", "<|message|>"
CHANNEL_ENDS = ("<|end|>", "<|return|>", "<|call|>")
CHANNEL_START = "<|start|>"
REASONING_CHANNELS = ("analysis",)
EFFORTS = ("low", "medium", "high")


@dataclass(frozen=True)
class Markers:
    """How a model's output marks its thinking: a pair of tags, or harmony channels."""

    format: str = "tags"  # tags, channels
    open: str = "<think>"
    close: str = "</think>"

    def describe(self) -> str:
        if self.format == "channels":
            return "harmony channels (analysis = reasoning, final = answer)"
        return f"{self.open}…{self.close}"


THINK_TAGS = Markers()
HARMONY = Markers("channels", CHANNEL, MESSAGE)


@dataclass(frozen=True)
class Split:
    """One output read apart: what the model thought, what it answered."""

    reasoning: str = ""
    answer: str = ""
    truncated: bool = False  # the thinking began and never ended: there is no answer
    thought: bool = False  # a thinking block (or analysis channel) was there at all, even empty


class StreamSplitter:
    """Splits output chunk by chunk into reasoning and answer deltas.

    `feed` returns (reasoning delta, answer delta) for what can be decided so far; `finish` returns
    the rest and the whole `Split`. Whitespace around the thinking is dropped (leading and trailing
    in the reasoning, leading in the answer after it), as chat templates do; plain output passes
    through unchanged. `starts_in_thinking`: the prompt already opened the block (its generation
    prompt ends with the open tag), so the output begins inside it."""

    def __init__(self, markers: Markers = THINK_TAGS, starts_in_thinking: bool = False) -> None:
        self.markers = markers
        self._buffer = ""
        self._reasoning: list[str] = []
        self._answer: list[str] = []
        self._thought = starts_in_thinking
        self._pending_space = ""  # whitespace inside the thinking, kept only if more thinking follows
        self._final_seen = False  # channels: an answer channel began
        if markers.format == "channels":
            self._state = "header"
            self._header = ""
            self._channel = ""
        else:
            self._state = "think_lead" if starts_in_thinking else "start"
        self._finished: Optional[Split] = None

    # --- feeding ------------------------------------------------------------------------------------

    def feed(self, chunk: str) -> tuple[str, str]:
        self._buffer += chunk
        reasoning_before, answer_before = len(self._reasoning), len(self._answer)
        if self.markers.format == "channels":
            self._run_channels(final=False)
        else:
            self._run_tags(final=False)
        return "".join(self._reasoning[reasoning_before:]), "".join(self._answer[answer_before:])

    def finish(self) -> tuple[str, str, Split]:
        reasoning_before, answer_before = len(self._reasoning), len(self._answer)
        if self.markers.format == "channels":
            self._run_channels(final=True)
            truncated = self._thought and not self._final_seen
        else:
            self._run_tags(final=True)
            truncated = self._state in ("think", "think_lead")
        self._finished = Split("".join(self._reasoning), "".join(self._answer), truncated, self._thought)
        return ("".join(self._reasoning[reasoning_before:]), "".join(self._answer[answer_before:]),
                self._finished)

    # --- tags ---------------------------------------------------------------------------------------

    def _run_tags(self, final: bool) -> None:
        open_tag, close_tag = self.markers.open, self.markers.close
        while self._buffer:
            if self._state == "start":
                stripped = self._buffer.lstrip()
                if stripped.startswith(open_tag):
                    self._thought = True
                    self._buffer = stripped[len(open_tag):]
                    self._state = "think_lead"
                elif not final and open_tag.startswith(stripped):
                    return  # may still become the open tag
                else:
                    self._state = "plain"
            elif self._state == "plain":
                self._answer.append(self._buffer)
                self._buffer = ""
            elif self._state in ("think_lead", "answer_lead"):
                stripped = self._buffer.lstrip()
                self._buffer = stripped
                if not stripped:
                    return
                self._state = "think" if self._state == "think_lead" else "answer"
            elif self._state == "think":
                at = self._buffer.find(close_tag)
                if at >= 0:
                    self._think(self._buffer[:at], closing=True)
                    self._buffer = self._buffer[at + len(close_tag):]
                    self._pending_space = ""
                    self._state = "answer_lead"
                    continue
                keep = 0 if final else _partial_suffix(self._buffer, (close_tag,))
                self._think(self._buffer[:len(self._buffer) - keep], closing=final)
                self._buffer = self._buffer[len(self._buffer) - keep:]
                return
            else:  # answer
                self._answer.append(self._buffer)
                self._buffer = ""

    def _think(self, text: str, closing: bool) -> None:
        """Reasoning text; trailing whitespace waits until more reasoning shows it is not the end."""
        if not text:
            return
        body = text.rstrip()
        if body:
            self._reasoning.append(self._pending_space + body)
            self._pending_space = ""
        self._pending_space += text[len(body):]
        if closing:
            self._pending_space = ""

    # --- harmony channels ---------------------------------------------------------------------------

    def _run_channels(self, final: bool) -> None:
        markers = (CHANNEL, MESSAGE, CHANNEL_START) + CHANNEL_ENDS
        while self._buffer:
            if self._state == "header":
                at = self._buffer.find(MESSAGE)
                if at < 0:
                    if final:
                        self._buffer = ""
                    return
                self._header += self._buffer[:at]
                self._buffer = self._buffer[at + len(MESSAGE):]
                name = self._header.split(CHANNEL)[-1] if CHANNEL in self._header else ""
                self._channel = name.split("<|")[0].split()[0] if name.split() else ""
                self._header = ""
                reasoning = self._channel in REASONING_CHANNELS
                self._thought = self._thought or reasoning
                self._final_seen = self._final_seen or not reasoning
                self._state = "body"
                continue
            # body: up to the next end or start marker
            ends = [(self._buffer.find(end), end) for end in CHANNEL_ENDS + (CHANNEL_START,)]
            ends = [(at, end) for at, end in ends if at >= 0]
            if ends:
                at, end = min(ends)
                self._body(self._buffer[:at])
                self._buffer = self._buffer[at + len(end):]
                self._state = "header"
                continue
            keep = 0 if final else _partial_suffix(self._buffer, markers)
            self._body(self._buffer[:len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep:]
            return

    def _body(self, text: str) -> None:
        if not text:
            return
        if self._channel in REASONING_CHANNELS:
            self._reasoning.append(text)
        else:
            self._answer.append(text)


def _partial_suffix(text: str, markers: Iterable[str]) -> int:
    """The length of the longest tail of `text` that is a proper beginning of one of `markers`."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest


def split_reasoning(text: str, markers: Markers = THINK_TAGS, starts_in_thinking: bool = False) -> Split:
    """The whole output read apart, exactly as a stream of it would be.

    With tags, a close tag and no open tag means the prompt opened the block (a template that
    ends its generation prompt with the open tag), whatever `starts_in_thinking` says."""
    if markers.format == "tags" and markers.close in text and markers.open not in text:
        starts_in_thinking = True
    splitter = StreamSplitter(markers, starts_in_thinking)
    splitter.feed(text)
    return splitter.finish()[2]


@dataclass(frozen=True)
class ThinkingSupport:
    """What a model's chat template and tokenizer say about thinking."""

    markers: Optional[Markers] = None  # None: the model has no thinking markers
    switch: Optional[str] = None  # the template variable that turns thinking on/off: enable_thinking, reasoning_effort
    efforts: tuple[str, ...] = ()  # reasoning_effort levels, where the template reads that variable
    default_on: Optional[bool] = None  # thinking when the template variable is not given
    evidence: list[str] = field(default_factory=list)  # what was found where, in words

    @property
    def can_think(self) -> bool:
        return self.markers is not None

    def describe(self) -> str:
        if not self.can_think:
            return "no thinking markers in the chat template or special tokens"
        how = {"enable_thinking": "switched by the template variable enable_thinking",
               "reasoning_effort": "graded by the template variable reasoning_effort (" + ", ".join(self.efforts) + ")",
               None: "no switch in the template (always thinks)"}[self.switch]
        return f"thinks in {self.markers.describe()}; {how}; found: " + "; ".join(self.evidence)


def thinking_support(template: Optional[str], special_tokens: Iterable[str] = ()) -> ThinkingSupport:
    """Read a chat template (Jinja source) and the tokenizer's added tokens for thinking markers and a switch.

    Harmony channels win where the template writes them (gpt-oss); otherwise the first known tag
    pair that the template or the tokens name. The switch is the variable the template tests."""
    template = template or ""
    tokens = set(special_tokens)
    evidence: list[str] = []
    markers: Optional[Markers] = None
    if CHANNEL in template or ({CHANNEL, MESSAGE} <= tokens):
        markers = HARMONY
        evidence.append("harmony channel markers in the " + ("chat template" if CHANNEL in template else "special tokens"))
    else:
        for open_tag, close_tag in KNOWN_TAGS:
            where = [name for name, found in (("chat template", close_tag in template),
                                              ("tokenizer", {open_tag, close_tag} <= tokens)) if found]
            if where:
                markers = Markers("tags", open_tag, close_tag)
                evidence.append(f"{open_tag}…{close_tag} in the " + " and the ".join(where))
                break
    switch: Optional[str] = None
    efforts: tuple[str, ...] = ()
    default_on: Optional[bool] = None
    if markers is not None and "enable_thinking" in template:
        switch, default_on = "enable_thinking", True  # Qwen3's default: thinking unless told otherwise
        evidence.append("the template reads enable_thinking")
    elif markers is not None and "reasoning_effort" in template:
        switch, default_on = "reasoning_effort", True
        efforts = tuple(level for level in EFFORTS if level in template) or EFFORTS
        evidence.append("the template reads reasoning_effort")
    elif markers is not None:
        default_on = True
    return ThinkingSupport(markers, switch, efforts, default_on, evidence)


def opens_thinking(prompt: str, markers: Optional[Markers]) -> bool:
    """Whether a rendered generation prompt ends inside an open thinking block (the output starts in it)."""
    if markers is None or markers.format != "tags":
        return False
    tail = prompt.rstrip()
    return tail.endswith(markers.open)
