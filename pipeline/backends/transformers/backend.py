"""The transformers backend: the in-process model behind the backend contract.

Its plan is the run's RuntimePlan (pipeline.backends.transformers.plan): device, dtype, attention, offload,
compile, KV cache and continuous batching become its options, each with the plan's reason. It
loads through reuse.py (a sweep's jobs share one load) and load.py, and generates through
generate.py (all three beside this module): each request's messages and tools are rendered with the
model's chat template (pipeline.data.prompts.render, the session's template arguments and prefill
included), encoded, batched with the request's own seed, and the answer's tool calls are read
with pipeline.core.tool_calls. A request whose prompt does not fit the context (and may not be cut)
comes back as an error Completion; anything else that goes wrong in the model is the run's
failure and is raised.

`count_tokens` encodes the prompts with the loaded tokenizer and keeps them, so the batch that
follows does not encode them a second time (that was 4% of the demo's execute time on a CPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.backends.base import (Backend, BackendOption, BackendPlan, Capabilities, ChoicesRequest, ChoicesResult,
                                    Completion, Identity, Request, RollingResult)
from pipeline.backends.local_tokenizer import token_counter
from pipeline.data.chat_template import ChatTemplate
from pipeline.backends.transformers.generate import generate_batch
from pipeline.backends.transformers.media_inputs import count as count_media_tokens
from pipeline.backends.transformers.media_inputs import encode as encode_media
from pipeline.backends.transformers.media_inputs import load_processor, media_of
from pipeline.backends.transformers.reuse import LoadRecord, acquire
from pipeline.backends.transformers.threads import apply_threads, choose_threads
from pipeline.backends.transformers.thinking import (ANSWER, FORCING, THINKING, RowState, ThinkingBudget,
                                                     ThinkingTokens, split_ids, thinking_tokens)
from pipeline.core.config import SessionConfig
from pipeline.core.reasoning import StreamSplitter, opens_thinking, split_reasoning
from pipeline.core.records import LoadedRuntime, MediaPart, RuntimePlan
from pipeline.core.streaming import RowSink, StreamSink
from pipeline.core.thinking import ThinkingPlan
from pipeline.core.tool_calls import parse_tool_calls
from pipeline.data.prompts import adds_special_tokens, render

# the RuntimePlan's decisions that are this backend's options, in the order plan.json shows them
OPTIONS = ("device", "dtype", "attn_implementation", "offload", "max_memory", "batch_size", "compile",
           "cache_implementation", "continuous_batching", "threads")
# settings a request may set for itself; the rest of a batch's settings come from the run's plan
REQUEST_SETTINGS = ("top_p", "top_k", "min_p", "repetition_penalty")


@dataclass
class _Prompt:
    """A request as generate_batch takes it: its rendered prompt, its tokens once encoded, its seed."""

    prompt: str
    prompt_ids: list[int]
    seed: Optional[int]
    media: tuple[MediaPart, ...] = ()  # its images and audio, in the order the chat template writes them


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, plan: RuntimePlan, session: SessionConfig, chat_template: Optional[ChatTemplate] = None,
                 trust_remote_code: bool = False, run_dir: Optional[Path] = None, reuse: bool = True) -> None:
        self.runtime_plan = plan
        self.thinking = ThinkingPlan.from_dict(plan.thinking)
        if self.thinking.template_args:  # the switch the plan chose (enable_thinking, reasoning_effort)
            session = replace(session, template_args={**session.template_args, **self.thinking.template_args})
        self.session = session
        self.chat_template = chat_template
        self.trust_remote_code = trust_remote_code
        self.run_dir = run_dir
        self.reuse = reuse
        self.capabilities = Capabilities(modalities=tuple(plan.model.modalities), tools=True, per_request_seed=True,
                                         streaming=True, thinking_switch=bool(self.thinking.template_args), loglikelihood=True)
        self.runtime: Optional[LoadedRuntime] = None
        self.load_record: Optional[LoadRecord] = None  # how load() got the model (load.json)
        self.threads: Optional[int] = None  # torch's intra-op threads once loaded (load.json)
        self._encoded: dict[int, tuple[Request, _Prompt]] = {}  # id(request) -> what count_tokens encoded
        self._plan_processor: Any = None  # a multimodal model's processor, for counting before load()
        self._cache_identity: Optional[dict[str, Any]] = None  # computed once (it hashes the model's small files)

    @classmethod
    def from_runtime(cls, runtime: LoadedRuntime, session: SessionConfig) -> "TransformersBackend":
        """A backend over a model already in memory (pipeline.backends.transformers.load.load)."""
        backend = cls(runtime.plan, session, runtime.chat_template)
        backend.runtime = runtime
        return backend

    # --- what the answering loop reads -------------------------------------------------------------

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        if self.runtime_plan.backend_options.get("continuous_batching"):
            return 1 << 30  # continuous batching schedules all of a round's requests itself
        return self.runtime_plan.batch_size

    @property
    def context_length(self) -> Optional[int]:  # type: ignore[override]
        return self.runtime_plan.context_length or None

    @property
    def generation(self) -> dict[str, Any]:  # type: ignore[override]
        return self.runtime_plan.generation

    def identity(self) -> Identity:
        model = self.runtime_plan.model
        return Identity(backend=self.name, model=model.path, digest=model.weights_digest)

    def cache_identity(self) -> Optional[dict[str, Any]]:
        """The weights and the small files (tokenizer, template, config) by digest, not by folder: the same
        model copied elsewhere hits, a changed file misses; and what the plan fixed for every request that
        can change an answer (dtype and attention change the numbers; the thinking plan bounds the reasoning)."""
        plan = self.runtime_plan
        if not plan.model.weights_digest:
            return None
        if self._cache_identity is None:
            from pipeline.core.digest import model_files_digest

            thinking = {k: v for k, v in self.thinking.to_dict().items() if k not in ("found", "how")}  # words only
            options = plan.backend_options  # max_memory left out: budgets from free memory, not the answers
            self._cache_identity = {
                "backend": self.name, "weights": plan.model.weights_digest,
                "files": model_files_digest(Path(plan.model.path)), "device": plan.device.split(":", 1)[0],
                "dtype": plan.dtype, "attn_implementation": options["attn_implementation"], "offload": options["offload"],
                "options": {k: v for k, v in options.items() if k not in ("attn_implementation", "offload", "max_memory")},
                "context_length": plan.context_length,
                "truncation": self.session.truncation, "chat_template": self.session.chat_template,
                "thinking": thinking}
        return self._cache_identity

    def cache_prompt(self, request: Any) -> Optional[str]:
        return self._render(request)

    # --- the contract ------------------------------------------------------------------------------

    def plan(self, requests: Sequence[Request]) -> BackendPlan:
        """The RuntimePlan's choices as options; prompt tokens counted from the tokenizer's files."""
        plan = self.runtime_plan
        values = {"device": plan.device, "dtype": plan.dtype, "batch_size": plan.batch_size, **plan.backend_options}
        options = [BackendOption(name, values.get(name), plan.reasons.get(name, "")) for name in OPTIONS]
        counter = token_counter(Path(plan.model.path)) if requests else None
        special = adds_special_tokens(self.session)
        counts = [self._count_media(request) if media_of(request.messages) else counter.count(self._render(request), special)
                  for request in requests] if counter else []
        return BackendPlan(identity=self.identity(), capabilities=self.capabilities, options=options,
                           context_length=self.context_length, prompt_tokens=counts, token_source="tokenizer",
                           checks=list(plan.checks), warnings=list(plan.warnings))

    def load(self) -> None:
        # every job, a reused model's too: a plan from before runtime.threads existed has no value, so the usable cores
        threads = self.runtime_plan.backend_options.get("threads") or choose_threads(None)[0]
        self.threads = apply_threads(threads)
        if self.runtime is None:
            if self.run_dir is None:
                from pipeline.backends.transformers.load import load

                self.runtime = load(self.runtime_plan, self.chat_template, self.trust_remote_code)
            else:
                self.runtime, self.load_record = acquire(self.runtime_plan, self.chat_template, self.trust_remote_code,
                                                         self.run_dir, self.reuse)
                self.load_record.threads = self.threads

    def close(self) -> None:
        """Lets go of this backend's hold; a model kept for the next job of a sweep stays (see reuse.py)."""
        self.runtime = None
        self._encoded = {}

    def count_tokens(self, requests: Sequence[Request]) -> list[int]:
        """Renders and encodes the prompts, and keeps them for `generate` (a new round replaces them)."""
        prompts = self._encode(requests)
        self._encoded = {id(request): (request, prompt) for request, prompt in zip(requests, prompts)}
        return [len(prompt.prompt_ids) for prompt in prompts]

    def generate(self, requests: Sequence[Request], sink: Optional[StreamSink] = None) -> list[Completion]:
        runtime = self._loaded()
        completions: list[Optional[Completion]] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # one generate call per set of settings (usually the whole batch)
        for index, request in enumerate(requests):
            refused = self._over_context(request)
            if refused is not None:
                completions[index] = refused
            else:
                groups.setdefault(json.dumps(self._settings(request), sort_keys=True, default=str), []).append(index)
        for indexes in groups.values():
            rows = [self._prompt(requests[i]) for i in indexes]
            settings = self._settings(requests[indexes[0]])
            whole = indexes == list(range(len(requests)))  # else the sink is told rows as numbered in `requests`
            row_sink = sink if sink is None or whole else RowSink(sink, indexes)
            for i, output in zip(indexes, self._generate_rows(runtime, rows, settings, row_sink)):
                completions[i] = self._completion(requests[i], *output)
        return [c for c in completions if c is not None]

    def loglikelihoods(self, requests: Sequence[ChoicesRequest]) -> list[ChoicesResult]:
        """Each context run once, its KV cache shared by its choices (loglikelihood.py)."""
        from pipeline.backends.transformers.loglikelihood import score_choices, split_pair

        runtime = self._loaded()
        special = adds_special_tokens(self.session)
        known: dict[str, list[int]] = {}

        def encode(text: str) -> list[int]:  # a context is encoded once for all its choices
            if text not in known:
                known[text] = runtime.tokenizer(text, add_special_tokens=special)["input_ids"]
            return known[text]

        pairs = []
        for request in requests:
            known.clear()
            context = render(self.chat_template, request.messages, self.session)
            pairs.append([split_pair(encode, context, continuation) for continuation in request.continuations])
        pad = runtime.tokenizer.pad_token_id if runtime.tokenizer.pad_token_id is not None else 0
        return score_choices(runtime.model, pairs, pad, self.context_length)

    def rolling_loglikelihoods(self, texts: Sequence[str]) -> list[RollingResult]:
        from pipeline.backends.transformers.loglikelihood import score_rolling

        runtime = self._loaded()
        tokenizer = runtime.tokenizer
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        limit = self.context_length or 2048
        return [score_rolling(runtime.model, tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"],
                              prefix, limit)
                for text in texts]

    # --- inside ------------------------------------------------------------------------------------

    def _loaded(self) -> LoadedRuntime:
        if self.runtime is None:
            raise RuntimeError("the transformers backend generates only after load()")
        return self.runtime

    def _encode(self, requests: Sequence[Request]) -> list[_Prompt]:
        runtime = self._loaded()
        texts = [self._render(request) for request in requests]
        if not texts:
            return []
        special = adds_special_tokens(self.session)
        encoded = runtime.tokenizer(texts, add_special_tokens=special)["input_ids"]
        prompts = []
        for request, text, ids in zip(requests, texts, encoded):
            media = tuple(media_of(request.messages))
            if media:  # the processor expands each part's placeholder: these are the tokens the model sees
                ids = encode_media(self._processor(), [text], [media], special)["input_ids"][0].tolist()
            prompts.append(_Prompt(text, ids, request.seed, media))
        return prompts

    def _processor(self) -> Any:
        if self.runtime is not None and self.runtime.processor is not None:
            return self.runtime.processor
        if self._plan_processor is None:
            self._plan_processor = load_processor(self.runtime_plan.model.path, self.trust_remote_code)
        return self._plan_processor

    def _count_media(self, request: Request) -> int:
        return count_media_tokens(self._processor(), self._render(request), media_of(request.messages),
                                  adds_special_tokens(self.session))

    def _render(self, request: Request | ChoicesRequest) -> str:
        return render(self.chat_template, request.messages, self.session, getattr(request, "tools", None) or None)

    def _prompt(self, request: Request) -> _Prompt:
        known = self._encoded.pop(id(request), None)
        if known is not None and known[0] is request:
            return known[1]
        return _Prompt(self._render(request), [], request.seed, tuple(media_of(request.messages)))  # encoded there

    def _settings(self, request: Request) -> dict[str, Any]:
        settings = dict(self.runtime_plan.generation)
        settings.update(max_new_tokens=request.max_new_tokens, temperature=request.temperature,
                        do_sample=request.temperature > 0, stop=list(request.stop))
        settings.update({name: getattr(request, name) for name in REQUEST_SETTINGS
                         if getattr(request, name) is not None})
        return settings

    def _generate_rows(self, runtime: LoadedRuntime, rows: list[_Prompt], settings: dict[str, Any],
                       sink: Optional[StreamSink]) -> list[tuple[int, Any, dict[str, Any]]]:
        """(prompt tokens, generate's completion, its reasoning fields) per row: thinking bounded by the
        plan's budget, the answer by max_new_tokens, an answer cut by it continued as the plan says."""
        special = adds_special_tokens(self.session)
        markers = self.thinking.reading_markers if self.thinking.can_think else None
        tokens = thinking_tokens(runtime.tokenizer, markers, self.thinking.wrapup,
                                 _end_ids(runtime)) if markers is not None else None
        starts = [opens_thinking(row.prompt, markers) for row in rows]
        states = [RowState(phase=THINKING if start else "before") for start in starts]
        if sink is not None and markers is not None:
            sink = _ReasoningSink(sink, [StreamSplitter(markers, start) for start in starts])
        counts: list[int] = [0] * len(rows)
        outputs: list[Any] = [None] * len(rows)
        parts = [0] * len(rows)
        pending = list(range(len(rows)))
        prompts = list(rows)
        while pending:
            batch = [prompts[i] for i in pending]
            limit = settings["max_new_tokens"]
            budget_states = [states[i] for i in pending]
            step_settings = dict(settings, max_new_tokens=self._total_tokens(
                lambda: [len(_ids(runtime, row, special)) for row in batch], limit, tokens))
            factory = None
            if tokens is not None:
                factory = (lambda length, s=budget_states:  # noqa: E731
                           ThinkingBudget(tokens, self.thinking.budget, limit, length, s))
            step_sink = sink if sink is None or pending == list(range(len(rows))) else RowSink(sink, pending)
            got_counts, got = generate_batch(runtime, batch, step_settings, special, step_sink, factory)
            going_on = []
            for i, count, output in zip(pending, got_counts, got):
                if states[i].cut:
                    output.finish_reason = "length"
                if outputs[i] is None:
                    counts[i], outputs[i] = count, output
                else:  # a continuation: one answer made of its parts
                    first = outputs[i]
                    first.text, first.ids = first.text + output.text, first.ids + output.ids
                    first.tokens += output.tokens
                    first.latency_s += output.latency_s
                    first.finish_reason = output.finish_reason
                    parts[i] += 1
                if output.finish_reason == "length" and parts[i] < self.thinking.continue_on_length \
                        and output.ids:
                    going_on.append(i)
                    prompts[i] = _Prompt(prompts[i].prompt + output.text, _ids(runtime, prompts[i], special)
                                         + output.ids, prompts[i].seed)
                    state = states[i]
                    states[i] = RowState(phase=THINKING, reasoning=state.reasoning) \
                        if state.phase in (THINKING, FORCING) else RowState(phase=ANSWER)
            pending = going_on
        results = []
        for i, output in enumerate(outputs):
            fields: dict[str, Any] = {"continuations": parts[i]}
            if markers is not None:
                split = split_reasoning(output.text, markers, starts[i])
                output.text = split.answer
                fields.update(reasoning=split.reasoning, reasoning_truncated=split.truncated)
                if tokens is not None:
                    by_tokens = split_ids(output.ids, tokens, starts[i])
                    fields.update(reasoning_tokens=by_tokens.reasoning_tokens, answer_tokens=by_tokens.answer_tokens)
                elif split.thought:  # tags of several tokens: count the texts
                    encode = runtime.tokenizer
                    fields.update(reasoning_tokens=len(encode(split.reasoning, add_special_tokens=False)["input_ids"]),
                                  answer_tokens=len(encode(split.answer, add_special_tokens=False)["input_ids"]))
            results.append((counts[i], output, fields))
        return results

    def _total_tokens(self, prompt_lengths: Any, answer_limit: int, tokens: Optional[ThinkingTokens]) -> int:
        """generate's max_new_tokens: the answer's limit, and room for the thinking before it (the budget,
        forced tags and wrap-up; without a budget, what the context leaves)."""
        if tokens is None or self.thinking.mode == "off":
            return answer_limit
        if self.thinking.budget is not None:
            return 1 + self.thinking.budget + len(tokens.wrapup_ids) + len(tokens.close_ids) + answer_limit + 1
        context = self.context_length or 4096
        return max(answer_limit, context - max(prompt_lengths(), default=0))

    def _over_context(self, request: Request) -> Optional[Completion]:
        """An error Completion for a prompt that leaves no room for its answer (unless it may be cut)."""
        context = self.context_length
        if not context or self.session.truncation == "left":
            return None
        known = self._encoded.get(id(request))
        if known is not None and known[0] is request:
            tokens = len(known[1].prompt_ids)
        else:  # not counted before: encode it now (and keep it for the batch)
            (prompt,) = self._encode([request])
            self._encoded[id(request)] = (request, prompt)
            tokens = len(prompt.prompt_ids)
        if tokens + request.max_new_tokens <= context:
            return None
        self._encoded.pop(id(request), None)
        return Completion(prompt_tokens=tokens, finish_reason="error",
                          error=f"{tokens} prompt tokens + max_new_tokens={request.max_new_tokens} do not fit the "
                                f"model's context of {context} tokens")

    def _completion(self, request: Request, prompt_tokens: int, output: Any, fields: dict[str, Any]) -> Completion:
        completion = Completion(text=output.text, prompt_tokens=prompt_tokens, completion_tokens=output.tokens,
                                finish_reason=output.finish_reason, ttft_s=output.ttft_s, latency_s=output.latency_s,
                                truncated=output.truncated, **fields)
        if request.tools:  # the calls are in the text, in the chat template's markup; the prefill starts the answer
            parsed = parse_tool_calls(self.session.prefill + output.text)
            if parsed.wants_tools:
                completion.tool_calls, completion.tool_problems = parsed.calls, parsed.problems
                completion.message_text = parsed.text
                completion.finish_reason = "tool" if parsed.calls and output.finish_reason == "stop" else \
                    output.finish_reason
        return completion


def _end_ids(runtime: LoadedRuntime) -> set[int]:
    eos = runtime.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if runtime.tokenizer.eos_token_id is not None:
        ids.add(runtime.tokenizer.eos_token_id)
    return ids


def _ids(runtime: LoadedRuntime, prompt: _Prompt, special: bool) -> list[int]:
    return prompt.prompt_ids or runtime.tokenizer(prompt.prompt, add_special_tokens=special)["input_ids"]


class _ReasoningSink:
    """A sink told only the answer's text as it comes (`on_reasoning(row, text)` too, where the sink has it)."""

    def __init__(self, sink: StreamSink, splitters: list[StreamSplitter]) -> None:
        self.sink, self.splitters = sink, splitters
        self.streams_text = getattr(sink, "streams_text", True)

    def on_text(self, row: int, text: str) -> None:
        reasoning, answer = self.splitters[row].feed(text)
        if reasoning and hasattr(self.sink, "on_reasoning"):
            self.sink.on_reasoning(row, reasoning)
        if answer:
            self.sink.on_text(row, answer)

    def on_complete(self, row: int, text: str) -> None:
        reasoning, answer, split = self.splitters[row].finish()
        if reasoning and hasattr(self.sink, "on_reasoning"):
            self.sink.on_reasoning(row, reasoning)
        if answer:
            self.sink.on_text(row, answer)
        self.sink.on_complete(row, split.answer)
