"""The OpenAI-compatible server backend: any server that speaks /v1/chat/completions (vLLM, SGLang,
llama.cpp's server, Ollama, LM Studio, `transformers serve`, OpenAI and Azure OpenAI themselves).

Planning checks the server before anything is sent for generation (pipeline.backends.openai.client).
Generation streams every request (time to first token is measured, not estimated) with at most
`max_concurrency` in flight, retries what can succeed on retry with jittered exponential backoff
that honours Retry-After, and turns a request that still fails into a Completion with `error`; one
that still could not reach the server at all (refused, reset, dropped mid-answer) is marked
`unavailable`, which stops the run rather than filling its transcript with errors.
The openai client's own retries are off: it would retry 409 and 429 without our jitter and cap,
and this module must count attempts. The client only carries the requests: what the server answers
is read by pipeline.backends.openai.answers, and an answer the API does not promise is that
request's error (never retried), naming the server and what was wrong.

Servers differ in small ways this module evens out:
- stop strings: some include the matched stop string in the text (`transformers serve` does),
  some ignore `stop`; the text is cut before the first stop string here, as the in-process backend
  cuts it, and the finish reason is then "stop";
- tool calls: servers that know the model's format return native `tool_calls`; where they return
  the model's `<tool_call>` blocks as text (`transformers serve` with the tool demo model), the
  calls are read from the text with pipeline.core.tool_calls, so the loop sees the same thing;
- reasoning: `reasoning_content` (vLLM, DeepSeek) or `reasoning` (newer vLLM, Ollama) deltas go to
  Completion.reasoning, never into the answer.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import mimetypes
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import httpx

from pipeline.backends.base import (Backend, BackendOption, BackendPlan, Capabilities, ChoicesRequest, ChoicesResult,
                                    Completion, Identity, Request)
from pipeline.backends.openai import answers
from pipeline.backends.openai import client as server
from pipeline.backends.openai.config import PREFIX, OpenAIConfig
from pipeline.core.errors import UserError, one_line
from pipeline.core.reasoning import THINK_TAGS, split_reasoning
from pipeline.core.records import MediaPart, Message, ToolCall
from pipeline.core.streaming import StreamSink
from pipeline.core.thinking import ThinkingPlan
from pipeline.core.tool_calls import OPEN, parse_tool_calls
from pipeline.data.media import read_bytes

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool", "function_call": "tool",
           "content_filter": "stop", "eos": "stop"}
_NO_KEY = "no-key"  # the openai client insists on a key; servers without auth ignore this one


class _signals_held:
    """Hold SIGINT and SIGTERM for a few lines that must not be cut in half; they land right after."""

    _HELD = {signal.SIGINT, signal.SIGTERM}

    def __enter__(self) -> None:
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:
            self._before = signal.pthread_sigmask(signal.SIG_BLOCK, self._HELD)

    def __exit__(self, *_: Any) -> None:
        if self._active:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._before)


class RetryableFailure(Exception):
    """An attempt failed in a way that may succeed next time; carries the server's Retry-After."""

    def __init__(self, message: str, retry_after: Optional[float] = None, connection: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.connection = connection  # no answer at all (refused, reset, dropped): the server may be gone


class FinalFailure(Exception):
    """An attempt failed in a way that a retry would repeat (400, 404, 422 ...)."""


class OpenAIBackend(Backend):
    """A model behind an OpenAI-compatible server, named by the id the server lists in /models."""

    name = "openai"

    def __init__(self, config: OpenAIConfig, model: str) -> None:
        self.config = config.validate()
        if not isinstance(model, str) or not model.strip():
            raise UserError("runtime.model must name the model the server serves (its id in GET /models)")
        self.model = model
        self.secrets = server.Secrets(config)
        self._served: Optional[server.Served] = None
        self._loop: Optional[asyncio.Runner] = None  # one event loop from the first batch to close()
        self._tokenize_works: Optional[bool] = None  # None: not tried yet
        self._local: Optional[tuple[Any, Any]] = None  # backend.tokenizer's chat template and token counter, once read
        self.attempts = 0  # requests sent for generation, retries included (for tests and stats)
        # the plan's thinking switch (pipeline.core.thinking): chat_template_kwargs / reasoning_effort sent as is,
        # and the markers an answer is read with when the server leaves the thinking in the text
        self.thinking = ThinkingPlan()
        # the plan's choice: requests rendered here and sent in parts to /completions (pipeline.backends.openai.budgeted)
        self.parts = False

    # --- log-likelihoods (dataset.kind=multiple_choice; pipeline.backends.openai.loglikelihood) ----------

    def check_prompt_logprobs(self) -> str:
        """One probe request: a UserError unless the server returns the prompt's log-probabilities."""
        from pipeline.backends.openai.loglikelihood import probe

        problem = probe(self.config, self.secrets, self.model)
        if problem is not None:
            raise UserError(f"dataset.kind=multiple_choice needs the prompt's log-probabilities, and the server at "
                            f"{server.endpoint(self.config)} does not return them ({problem}); use a server that "
                            "does (vLLM, llama.cpp's server) or backend=transformers")
        return (f"{server.endpoint(self.config)}/completions returns the prompt's log-probabilities "
                "(echo and logprobs, probed once)")

    def loglikelihoods(self, requests: Sequence[ChoicesRequest]) -> list[ChoicesResult]:
        """Each choice as one /completions request that echoes context + choice (raw text: no chat template)."""
        from pipeline.backends.openai.loglikelihood import score_all

        started = time.perf_counter()
        contexts = ["\n\n".join(m.content for m in request.messages) for request in requests]
        jobs = [(context, text) for context, request in zip(contexts, requests) for text in request.continuations]
        scored = iter(score_all(self.config, self.secrets, self.model, jobs))
        results = []
        for request in requests:
            result = ChoicesResult(latency_s=time.perf_counter() - started)
            for _ in request.continuations:
                one = next(scored)
                if isinstance(one, str):
                    result.error = result.error or one
                else:
                    result.continuations.append(one)
            results.append(result)
        return results

    # --- identity and plan ------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(modalities=tuple(self.config.modalities), tools=True, per_request_seed=True,
                            loglikelihood=False, streaming=True, thinking_switch=False)

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        """Requests per `generate` call: as many as may be in flight, so each batch's records are written as it
        completes and a kill loses at most the requests in flight."""
        return self.config.max_concurrency

    def identity(self) -> Identity:
        reported = dict(self._served.entry) if self._served else {}
        return Identity(backend=self.name, model=self.model, endpoint=server.endpoint(self.config),
                        reported=json.loads(self.secrets.wipe(json.dumps(reported, default=str))))

    def cache_identity(self) -> Optional[dict[str, Any]]:
        """The server's word for its model: the endpoint (credentials masked) and the served id, with what this
        backend adds to every request; header names only (their values may be secrets)."""
        config = self.config
        thinking = {k: v for k, v in self.thinking.to_dict().items() if k not in ("found", "how")}
        return {"backend": self.name, "endpoint": server.endpoint(config), "model": self.model,
                "api_version": config.api_version, "token_limit_param": config.token_limit_param,
                "headers": sorted(config.headers), "parts": self.parts, "tokenizer": config.tokenizer,
                "thinking": thinking}

    def plan(self, requests: Sequence[Request]) -> BackendPlan:
        self._served = server.list_models(self.config, self.secrets, self.model)
        context = self._served.context_length
        counts, source, counted_with = self._count(requests)
        config = self.config
        options = [
            BackendOption("base_url", server.endpoint(config), "where the server was reached (credentials masked)"),
            BackendOption("model", self.model, "served by the server (GET /models)"),
            BackendOption("api_key", f"${config.api_key_env}" if self.secrets.key else "none",
                          f"from the environment variable {config.api_key_env}" if self.secrets.key
                          else f"{config.api_key_env} is unset and the server did not ask for a key"),
            BackendOption("token_limit_param", config.token_limit_param, "the request field the answer length goes in"),
            BackendOption("max_concurrency", config.max_concurrency, "requests in flight at once"),
            BackendOption("max_retries", config.max_retries, "extra attempts for connection errors, 408, 409, 429, 5xx"),
            BackendOption("timeout_s", config.timeout_s, "per attempt, from sending to the last token"),
            BackendOption("token_source", source, counted_with),
        ]
        if config.api_version:
            options.append(BackendOption("api_version", config.api_version, "Azure style: api-version query, api-key "
                                         "header, requests to <base_url>/deployments/<model>/chat/completions"))
        if config.headers:
            options.append(BackendOption("headers", sorted(config.headers), "extra headers sent (values not recorded)"))
        checks = [f"{server.endpoint(config)}/models answered and serves {self.model!r}"]
        warnings = []
        if self.model not in self._served.ids:  # only with api_version: an Azure deployment name
            checks = [f"{server.endpoint(config)}/models answered"]
            warnings.append(f"{self.model!r} is not in the server's model list (Azure lists base models, not "
                            "deployments): a wrong deployment name shows in the first request's error")
        if context is None:
            warnings.append("the server does not report the model's context length: prompts that are too long "
                            "fail as error records")
        else:
            checks.append(f"context length {context} tokens, as the server reports it")
            too_long = sum(1 for request, count in zip(requests, counts) if count + request.max_new_tokens > context)
            if too_long:
                warnings.append(f"{too_long} of {len(requests)} requests need more than the context length of "
                                f"{context} tokens ({source} counts, answer included)")
        if source == "estimate":
            warnings.append("prompt token counts are estimates (4 characters a token): the server has no /tokenize "
                            f"and {PREFIX}.tokenizer names no local tokenizer")
        return BackendPlan(identity=self.identity(), capabilities=self.capabilities, options=options,
                           context_length=context, prompt_tokens=counts, token_source=source, checks=checks,
                           warnings=warnings)

    def _count(self, requests: Sequence[Request]) -> tuple[list[int], str, str]:
        """Prompt tokens per request, and how they were counted (server, tokenizer or estimate)."""
        if not requests:
            return [], "server" if self._tokenize_works else "estimate", "no requests to count"
        if self._tokenize_works is not False:
            counts: list[int] = []
            with server.http_client(self.config, self.secrets) as http:
                for request in requests:
                    count = server.tokenize(http, self.config, self.model, to_openai_messages(request.messages))
                    if count is None:
                        break
                    counts.append(count)
            self._tokenize_works = len(counts) == len(requests)
            if self._tokenize_works:
                return counts, "server", "the server's /tokenize endpoint, with its chat template"
        if self.config.tokenizer:
            return self._count_locally(requests), "tokenizer", f"the local tokenizer {self.config.tokenizer}"
        return [_estimate(request.messages) for request in requests], "estimate", "4 characters a token"

    def count_tokens(self, requests: Sequence[Request]) -> list[int]:
        """The local tokenizer's counts when one is named, else the plan's estimate. Execute calls this every
        round only to batch by length (the server's usage gives the real counts), so the server's /tokenize,
        one round trip per request, is asked in the plan only."""
        if self.config.tokenizer:
            return self._count_locally(requests)
        return [_estimate(request.messages) for request in requests]

    def _local_files(self) -> tuple[Any, Any]:
        """backend.tokenizer's chat template (None if it has none) and token counter, read once."""
        if self._local is None:
            from pipeline.backends.local_tokenizer import token_counter
            from pipeline.data.chat_template import ChatTemplate

            folder = Path(self.config.tokenizer).expanduser()
            if not folder.is_dir():
                raise UserError(f"{PREFIX}.tokenizer={self.config.tokenizer!r} is not a folder: name a local model "
                                "folder with the served model's tokenizer, or null")
            self._local = ChatTemplate.from_folder(folder), token_counter(folder)
        return self._local

    def _count_locally(self, requests: Sequence[Request]) -> list[int]:
        if self.parts:  # the prompt /completions is sent: rendered here, with the plan's thinking switch
            counter = self._local_files()[1]
            return [counter.count(self._render(request), add_special_tokens=True) for request in requests]
        template, counter = self._local_files()
        counts = []
        for request in requests:
            if template is None:
                text = "\n".join(message.content for message in request.messages)
                counts.append(counter.count(text, add_special_tokens=True))
            else:
                text = template.render(list(request.messages), tools=request.tools or None)
                counts.append(counter.count(text, add_special_tokens=False))
        return counts

    # --- connect, generate, close -----------------------------------------------------------------

    def load(self) -> None:
        """Check the server still serves the model (it may have gone since the plan)."""
        self._served = server.list_models(self.config, self.secrets, self.model)

    def close(self) -> None:
        """Cancel what an interrupt left in flight (each request's stream is closed) and end the loop."""
        self._served = None
        if self._loop is not None:
            with _signals_held():
                self._loop.close()
            self._loop = None

    def generate(self, requests: Sequence[Request], sink: Optional[StreamSink] = None) -> list[Completion]:
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # the usual case: no event loop in this thread
            return self._run(self._generate_all(list(requests), sink))
        # called from inside an event loop (a notebook): asyncio.run cannot nest, a worker thread can
        with ThreadPoolExecutor(max_workers=1) as worker:
            return worker.submit(asyncio.run, self._generate_all(list(requests), sink)).result()

    def _run(self, batch: Any) -> list[Completion]:
        """Run one batch on this backend's loop. Ctrl-C or SIGTERM may land anywhere in here: the loop
        is built with them held (a loop interrupted half-built fails again when collected), a batch that
        never started is closed quietly, and one that did is cancelled by close()."""
        try:
            if self._loop is None:
                with _signals_held():
                    self._loop = asyncio.Runner()
                    self._loop.get_loop()
            return self._loop.run(batch)
        finally:
            if inspect.getcoroutinestate(batch) == inspect.CORO_CREATED:
                batch.close()

    async def _generate_all(self, requests: list[Request], sink: Optional[StreamSink]) -> list[Completion]:
        import openai

        config = self.config
        http = httpx.AsyncClient(trust_env=False, timeout=config.timeout_s,
                                 limits=httpx.Limits(max_connections=config.max_concurrency,
                                                     max_keepalive_connections=config.max_concurrency))
        common = dict(api_key=self.secrets.key or _NO_KEY, base_url=config.base_url, max_retries=0,
                      timeout=config.timeout_s, default_headers=dict(config.headers), http_client=http)
        if config.api_version:
            client = openai.AsyncAzureOpenAI(api_version=config.api_version, **common)
        else:
            client = openai.AsyncOpenAI(**common)
        gate = asyncio.Semaphore(config.max_concurrency)
        try:
            return list(await asyncio.gather(*(self._one(client, gate, row, request, sink)
                                               for row, request in enumerate(requests))))
        finally:
            await client.close()

    async def _one(self, client: Any, gate: asyncio.Semaphore, row: int, request: Request,
                   sink: Optional[StreamSink]) -> Completion:
        """One request to its completion: attempts, waits between them, and the error it ends with."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                async with gate:  # the bound holds attempts, not the waits between them
                    self.attempts += 1
                    completion = await asyncio.wait_for(self._attempt(client, row, request, sink),
                                                        timeout=self.config.timeout_s)
                break
            except asyncio.TimeoutError:
                failure: Exception = RetryableFailure(f"no complete answer within {PREFIX}.timeout_s="
                                                      f"{self.config.timeout_s:g}s")
            except (RetryableFailure, FinalFailure) as error:
                failure = error
            if isinstance(failure, FinalFailure) or attempt >= self.config.max_retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                gone = getattr(failure, "connection", False)  # not this request's fault: the server is not there
                said = (f"the server at {server.endpoint(self.config)} stopped answering: {failure}{tries}" if gone
                        else f"{request.key + ': ' if request.key else ''}{failure}{tries}")
                completion = Completion(finish_reason="error", latency_s=time.monotonic() - started,
                                        error=self.secrets.wipe(said), unavailable=gone)
                break
            await asyncio.sleep(server.backoff_s(self.config, attempt, getattr(failure, "retry_after", None)))
            attempt += 1
        if sink is not None and not completion.failed:  # as in-process: a failed row is not an answer to show
            sink.on_complete(row, completion.text)
        return completion

    async def _attempt(self, client: Any, row: int, request: Request, sink: Optional[StreamSink]) -> Completion:
        import openai

        try:
            if self.parts:
                return await self._attempt_budgeted(client, row, request, sink)
            return await self._attempt_chat(client, row, request, sink)
        except openai.APIStatusError as error:
            message = f"{error.status_code} {_reason(error)}"
            if error.status_code in server.RETRYABLE_STATUS or error.status_code >= 500:
                raise RetryableFailure(message, server.retry_after_s(error.response.headers)) from None
            raise FinalFailure(message) from None
        except (openai.APITimeoutError, httpx.TimeoutException):  # a slow server, not a gone one
            raise RetryableFailure(f"no complete answer within {PREFIX}.timeout_s={self.config.timeout_s:g}s") from None
        except (openai.APIConnectionError, httpx.TransportError) as error:
            raise RetryableFailure(f"connection to the server failed: {_connection_reason(error)}",
                                   connection=True) from None
        except answers.BadAnswer as error:  # an answer the API does not promise: a retry would read the same
            route = "POST /completions" if self.parts else "POST /chat/completions"
            raise FinalFailure(error.at(server.endpoint(self.config), route)) from None
        except answers.ServerError as error:  # an error object in a 200 answer, or inside the stream
            raise FinalFailure(error.at(server.endpoint(self.config))) from None

    async def _attempt_chat(self, client: Any, row: int, request: Request, sink: Optional[StreamSink]) -> Completion:
        """One streamed chat completions request, its answer read (and checked) by pipeline.backends.openai.answers."""
        sent = time.monotonic()
        first: Optional[float] = None
        streams_text = sink is not None and getattr(sink, "streams_text", True)
        async with client.chat.completions.with_streaming_response.create(**self._body(request)) as response:
            stream = answers.ChatStream(response.headers.get("content-type"))
            async for line in response.iter_lines():
                for piece in stream.feed(line):
                    if piece.says_something and first is None:
                        first = time.monotonic()
                    if piece.content and streams_text:
                        sink.on_text(row, piece.content)
            answer = stream.answer()
        done = time.monotonic()
        return self._completion(request, answer.text, answer.reasoning, answer.calls, answer.finish, answer.usage,
                                ttft=(first if first is not None else done) - sent, latency=done - sent)

    # --- a thinking budget or continuation: the rendered prompt in parts through /completions ----------

    @property
    def thinks(self) -> bool:
        """Whether the model may think in this run, in tags the parts can be split at."""
        markers = self.thinking.reading_markers
        return self.thinking.can_think and self.thinking.mode != "off" and markers is not None \
            and markers.format == "tags"

    def _render(self, request: Request) -> str:
        """The prompt as the served model's chat template writes it, with the plan's thinking switch; without
        the template's start token when the server's tokenizer adds it again (it encodes /completions'
        prompt with its special tokens)."""
        from pipeline.data.prompts import template_dict

        template, counter = self._local_files()
        prompt = template.render([template_dict(m) for m in request.messages], add_generation_prompt=True,
                                 tools=request.tools or None, **self.thinking.template_args)
        bos = template.special_tokens.get("bos_token")
        if bos and prompt.startswith(bos) and counter.count("", add_special_tokens=True):
            prompt = prompt[len(bos):]
        return prompt

    async def _attempt_budgeted(self, client: Any, row: int, request: Request,
                                sink: Optional[StreamSink]) -> Completion:
        from pipeline.backends.openai import budgeted

        if any(message.media for message in request.messages):  # planned without them (the Python client's probe)
            raise FinalFailure("an image or audio part cannot be sent as text to /v1/completions, where a thinking "
                               "budget, continue_on_length or backend.tokenizer with a thinking model sends prompts")
        _, counter = self._local_files()
        prompt = self._render(request)
        markers = self.thinking.reading_markers
        thinks = self.thinks
        count = (lambda text: counter.count(text, add_special_tokens=False))  # noqa: E731
        sizes = budgeted.Sizes(open=count(markers.open) if thinks else 0, close=count(markers.close) if thinks else 0,
                               wrapup=count(self.thinking.wrapup) if self.thinking.wrapup else 0, count=count)
        context = self._served.context_length if self._served else None
        room = context - counter.count(prompt, add_special_tokens=True) if context else None
        sent = time.monotonic()
        answered: list[float] = []

        async def complete(text: str, max_tokens: Optional[int], stop: list[str]) -> budgeted.Part:
            body: dict[str, Any] = {"model": self.model, "prompt": text, "temperature": request.temperature,
                                    "stream": False}
            if max_tokens is not None:
                body["max_tokens"] = max_tokens
            if stop:
                body["stop"] = list(stop)
            if request.top_p is not None:
                body["top_p"] = request.top_p
            if request.top_k is not None:
                body["extra_body"] = {"top_k": request.top_k}
            if request.seed is not None:
                body["seed"] = request.seed
            raw = (await client.completions.with_raw_response.create(**body)).http_response
            answered.append(time.monotonic())
            answer = answers.text_completion(answers.json_body(raw.text, raw.headers.get("content-type")))
            return budgeted.Part(text=answer.text, tokens=answer.usage.completion_tokens, finish=answer.finish or "stop",
                                 stop_reason=answer.stop_reason, prompt_tokens=answer.usage.prompt_tokens)

        result = await budgeted.generate(
            prompt, complete, markers=markers if thinks else None, thinks=thinks, sizes=sizes,
            budget=self.thinking.budget, wrapup=self.thinking.wrapup, answer_limit=request.max_new_tokens,
            continue_on_length=self.thinking.continue_on_length, stops=request.stop, room=room)
        done = time.monotonic()
        # the text is read as the chat path reads it (stop strings, tool calls); the split and counts are the parts'
        completion = self._completion(request, result.text, result.reasoning, {}, result.finish_reason, answers.Usage(),
                                      ttft=(answered[0] if answered else done) - sent, latency=done - sent)
        completion.reasoning_truncated = result.reasoning_truncated
        completion.prompt_tokens, completion.completion_tokens = result.prompt_tokens, result.completion_tokens
        completion.reasoning_tokens, completion.answer_tokens = result.reasoning_tokens, result.answer_tokens
        completion.continuations = result.continuations
        if sink is not None:  # not streamed: the sink is told each part once, when the answer is whole
            if completion.reasoning and hasattr(sink, "on_reasoning"):
                sink.on_reasoning(row, completion.reasoning)
            if completion.text and getattr(sink, "streams_text", True):
                sink.on_text(row, completion.text)
        return completion

    def _body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "messages": to_openai_messages(request.messages), "stream": True,
            "stream_options": {"include_usage": True}, "temperature": request.temperature,
            self.config.token_limit_param: request.max_new_tokens,
        }
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.top_k is not None:
            body["extra_body"] = {"top_k": request.top_k}  # vLLM, SGLang, llama.cpp; not in OpenAI's API
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = list(request.tools)
        if self.thinking.template_args.get("enable_thinking") is not None:  # vLLM, SGLang: the template's variable
            extra = body.setdefault("extra_body", {})
            extra["chat_template_kwargs"] = {"enable_thinking": self.thinking.template_args["enable_thinking"]}
        if self.thinking.reasoning_effort is not None:
            body["reasoning_effort"] = self.thinking.reasoning_effort
        return body

    def _completion(self, request: Request, text: str, reasoning: str, calls: dict[int, dict], finish: Optional[str],
                    usage: answers.Usage, ttft: float, latency: float) -> Completion:
        finish_reason = _FINISH.get(finish or "stop", "stop")
        cut = _cut_at_stop(text, request.stop)
        if cut is not None:
            text, finish_reason = cut, "stop"
        tool_calls = [ToolCall(call["name"], _arguments(call["arguments"])) for _, call in sorted(calls.items())]
        message_text: Optional[str] = None
        if request.tools and not tool_calls and OPEN in text:
            parsed = parse_tool_calls(text)  # the model's own format, passed through as text by the server
            if parsed.calls and not parsed.problems:
                # as in process: the text (and the transcript) keeps what the model wrote, markup included;
                # the conversation's assistant message carries the calls as tool_calls instead
                message_text, tool_calls = parsed.text, parsed.calls
        if tool_calls:
            finish_reason = "tool"
        truncated = False
        markers = self.thinking.reading_markers or THINK_TAGS
        if not reasoning and markers.format == "tags" and (markers.open in text or markers.close in text):
            split = split_reasoning(text, markers)  # a server without a reasoning parser: the tags are in the text
            text, reasoning, truncated = split.answer, split.reasoning, split.truncated
        return Completion(text=text, reasoning=reasoning, tool_calls=tool_calls, message_text=message_text,
                          reasoning_truncated=truncated, prompt_tokens=usage.prompt_tokens,
                          completion_tokens=usage.completion_tokens, reasoning_tokens=usage.reasoning_tokens,
                          finish_reason=finish_reason, ttft_s=min(ttft, latency), latency_s=latency)


# --- the wire format -------------------------------------------------------------------------------


def to_openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Our messages in the chat completions format; tool results are paired with the calls they answer.

    Our records keep no call ids, so each assistant call gets `call_<message>_<call>` and the tool
    messages after it take those ids in order, as the tool loop appends results in call order."""
    out: list[dict[str, Any]] = []
    pending: deque[str] = deque()
    for index, message in enumerate(messages):
        if message.role == "assistant" and message.tool_calls:
            ids = [f"call_{index}_{j}" for j in range(len(message.tool_calls))]
            pending.extend(ids)
            out.append({"role": "assistant", "content": message.content or None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
                for call_id, call in zip(ids, message.tool_calls)]})
        elif message.role == "tool":
            entry = {"role": "tool", "content": message.content,
                     "tool_call_id": pending.popleft() if pending else f"call_{index}"}
            if message.name:
                entry["name"] = message.name
            out.append(entry)
        elif message.media:  # the media first, then the text: as the transformers backend renders them
            parts: list[dict[str, Any]] = [_media_part(part) for part in message.media]
            if message.content:
                parts.append({"type": "text", "text": message.content})
            out.append({"role": message.role, "content": parts})
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def _media_part(part: MediaPart) -> dict[str, Any]:
    """An image as an image_url part (a local file as a data URL; an http(s) URL, which the plan let
    through only with runtime.allow_download=true, as is), audio as an input_audio part."""
    remote = part.path is None and part.source.lower().startswith(("http://", "https://"))
    if part.kind == "image":
        if remote or part.source.startswith("data:"):
            return {"type": "image_url", "image_url": {"url": part.source}}
        mime = mimetypes.guess_type(part.path or part.source)[0] or "application/octet-stream"
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{_base64(part)}"}}
    if part.kind == "audio":
        if remote:
            raise UserError(f"audio {part.source!r}: an OpenAI-compatible server takes audio as data, not a URL; "
                            "download it and name the file")
        kind = (part.mime or mimetypes.guess_type(part.path or "")[0] or "audio/wav").split("/")[-1]
        return {"type": "input_audio", "input_audio": {"data": _base64(part),
                                                        "format": {"x-wav": "wav", "mpeg": "mp3"}.get(kind, kind)}}
    raise UserError(f"a media part of kind {part.kind!r} cannot be sent to an OpenAI-compatible server: image or audio")


def _base64(part: MediaPart) -> str:
    """The part's checked bytes (read again, and refused if the file changed since the plan), in base64."""
    return base64.b64encode(read_bytes(part)).decode()


def _estimate(messages: Sequence[Message]) -> int:
    """A rough prompt length: 4 characters a token, plus a few tokens a message for the template's markers."""
    return sum(-(-len(message.content) // 4) + 4 for message in messages)


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"_unparsed": text}  # the loop reports it to the model as a bad call
    return value if isinstance(value, dict) else {"_unparsed": text}


def _cut_at_stop(text: str, stops: Sequence[str]) -> Optional[str]:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(positions)] if positions else None


def _reason(error: Any) -> str:
    """The server's own words for a refused request (OpenAI: error.message; FastAPI: detail)."""
    body = getattr(error, "body", None)
    detail = None
    if isinstance(body, dict):
        inner = body.get("error")
        detail = body.get("message") or body.get("detail") or (inner.get("message") if isinstance(inner, dict) else inner)
    return one_line(detail or getattr(error, "message", "") or type(error).__name__, 200)


def _connection_reason(error: BaseException) -> str:
    """What went wrong on the wire in a few words: the openai client says only "Connection error.", httpx
    says more ("peer closed connection without sending complete message body"), the socket most."""
    chain: list[BaseException] = []
    current: Optional[BaseException] = error
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for kind, words in ((ConnectionRefusedError, "connection refused"), (ConnectionResetError, "connection reset")):
        if any(isinstance(link, kind) for link in chain):
            return words
    said = [one_line(link, 200) for link in chain if isinstance(link, httpx.TransportError) and one_line(link, 200)]
    return said[0] if said else (one_line(error, 200) or type(error).__name__)


