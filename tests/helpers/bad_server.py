"""A server that answers badly on purpose: an OpenAI-compatible stub for the addition datasets (no model) whose
answer to each request follows the mode its question is given, for the tests of
pipeline.backends.openai.answers through `python -m pipeline`.

The question is read from what was sent ("What is 86+87?"): a question without a mode gets a right
answer (the sum, computed here), so a run mixes good and bad answers at will. Modes, on each route:

- chat (/v1/chat/completions, streamed): `whole` (a right answer as one JSON body, as a server that
  ignores stream=true), `not_json` (a chunk cut in half), `empty_choices`, `text_plain` (with the
  Authorization header in it, if one came),
  `missing_field` (a JSON body whose choice has no message), `wrong_type` (content a number),
  `error_object` (an error object in the stream);
- text completions (/v1/completions, the parts of continue_on_length): `empty_choices`, `text_plain`,
  `missing_field` (a choice without text), `wrong_type` (text a number), `not_json`;
- echoed log-probabilities (/v1/completions with echo, multiple choice): `missing_field` (no
  logprobs), `wrong_type` (token_logprobs as text), `empty_choices`, `text_plain`, `not_json`.
  A right echo makes the right sum the likeliest choice (-0.1 a character, -2 for a wrong sum).

`everything` sets a mode for every request of a route (the plan's probe included): "chat", "text",
"echo" or "models" (GET /v1/models, whose only modes are `text_plain` and `wrong_type`).
"""

from __future__ import annotations

import json
import re
from typing import Optional

from tests.helpers.openai_server import CHAT, StubServer, sse

MODEL = "stub"
QUESTION = re.compile(r"What is (\d+)\+(\d+)\?")
PLAIN = "upstream busy, try again later"


class BadServer(StubServer):
    def __init__(self, modes: Optional[dict[str, str]] = None, everything: Optional[dict[str, str]] = None) -> None:
        super().__init__({("GET", "/v1/models"): self._models, ("POST", CHAT): self._chat,
                          ("POST", "/v1/completions"): self._completions})
        self.modes = modes or {}
        self.everything = everything or {}

    def _mode(self, route: str, text: str) -> tuple[str, Optional[re.Match]]:
        found = QUESTION.search(text)
        mode = self.everything.get(route) or (self.modes.get(found.group(0), "good") if found else "good")
        return mode, found

    def _models(self, handler, body):
        mode = self.everything.get("models", "good")
        if mode == "text_plain":
            return 200, PLAIN, "text/plain"
        return 200, json.dumps({"object": "list", "data": [{"id": MODEL} if mode == "good" else {"id": 7}]})

    def _chat(self, handler, body):
        sent = json.loads(body)
        mode, found = self._mode("chat", sent["messages"][-1]["content"])
        answer = str(int(found.group(1)) + int(found.group(2))) if found else "?"
        usage = {"prompt_tokens": 12, "completion_tokens": len(answer) + 1, "total_tokens": 13 + len(answer)}

        def chunk(delta, finish=None):
            return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        if mode == "text_plain":  # a proxy's page that repeats the request's key, as careless ones do
            key = handler.headers.get("authorization")
            return 200, PLAIN + (f" ({key})" if key else ""), "text/plain"
        if mode in ("whole", "missing_field"):
            choice = {"index": 0, "finish_reason": "stop"}
            if mode == "whole":
                choice["message"] = {"role": "assistant", "content": answer}
            return 200, json.dumps({"id": "c", "object": "chat.completion", "choices": [choice], "usage": usage})
        if mode == "not_json":
            return 200, f'data: {{"choices": [{{"delta": {{"content": "{answer}\n\ndata: [DONE]\n\n', "text/event-stream"
        if mode == "empty_choices":
            chunks = [{**chunk({}), "choices": []}, {**chunk({}), "choices": [], "usage": usage}]
        elif mode == "wrong_type":
            chunks = [chunk({"role": "assistant", "content": int(answer) if answer.isdigit() else 0}, "stop")]
        elif mode == "error_object":
            chunks = [chunk({"role": "assistant", "content": answer[:1]}), {"error": {"message": "model overloaded"}}]
        else:
            chunks = [chunk({"role": "assistant", "content": answer[:1]}), chunk({"content": answer[1:]}, "stop"),
                      {**chunk({}), "choices": [], "usage": usage}]
        return 200, sse(chunks), "text/event-stream"

    def _completions(self, handler, body):
        sent = json.loads(body)
        prompt = sent["prompt"]
        echo = bool(sent.get("echo"))
        mode, found = self._mode("echo" if echo else "text", prompt)
        if mode == "text_plain":
            return 200, PLAIN, "text/plain"
        if mode == "not_json":
            return 200, '{"choices": [{"text": ', "application/json"
        if mode == "empty_choices":
            return 200, json.dumps({"id": "c", "object": "text_completion", "choices": []})
        choice = _echo(prompt, found, mode) if echo else _text(found, mode)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": choice.pop("tokens", 1), "total_tokens": 0}
        return 200, json.dumps({"id": "c", "object": "text_completion", "choices": [choice], "usage": usage})


def _text(found: Optional[re.Match], mode: str) -> dict:
    """A whole answer to a rendered prompt (one part: the end of turn counted in the usage, as servers count it)."""
    answer = str(int(found.group(1)) + int(found.group(2))) if found else "?"
    choice = {"index": 0, "text": answer, "finish_reason": "stop", "tokens": len(answer) + 1}
    if mode == "missing_field":
        del choice["text"]
    elif mode == "wrong_type":
        choice["text"] = int(answer) if answer.isdigit() else 0
    return choice


def _echo(prompt: str, found: Optional[re.Match], mode: str) -> dict:
    """The prompt echoed a character a token; the characters after the question cost -0.1 each when they are the
    right sum, -2 otherwise."""
    right = str(int(found.group(1)) + int(found.group(2))) if found else None
    after = prompt[found.end():] if found else ""
    cost = -0.1 if right is not None and after.strip() == right else -2.0
    tokens = list(prompt) + ["x"]
    values = [None] + [cost] * (len(tokens) - 1)
    logprobs = {"tokens": tokens, "token_logprobs": values, "text_offset": list(range(len(tokens))),
                "top_logprobs": [None] + [{token: cost} for token in tokens[1:]]}
    if mode == "missing_field":
        logprobs = None
    elif mode == "wrong_type":
        logprobs["token_logprobs"] = [str(value) for value in values]
    return {"index": 0, "text": prompt + "x", "logprobs": logprobs, "finish_reason": "length"}
