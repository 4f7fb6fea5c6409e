"""The vLLM backend: a model run by vLLM's engine in this process, behind the backend contract.

Prompts are rendered exactly as the transformers backend renders them (pipeline.data.prompts.render: the
model's chat template, the session's template arguments and prefill, the plan's thinking switch, the tools'
schemas) and encoded here with the model's tokenizer, so vLLM is handed token ids and greedy answers are the
transformers backend's token for token. One `llm.generate` call answers a batch; each request's sampling is
its own SamplingParams (temperature, top-p/k, min-p, repetition penalty, stops, and its seed: a request's seed
decides its draws whatever its batch). Reasoning is split from the answer and tool calls are read with the
helpers the other backends use (pipeline.core.reasoning, pipeline.core.tool_calls); the tools run in our loop.

A thinking model, or `generation.continue_on_length`, is answered in parts (parts.py): the thinking up to its
budget, the forced close, then the answer, each part a text prompt continuing the last. Log-likelihoods come
from vLLM's prompt log-probabilities, with the tokens split where the transformers backend splits them.
Not here: the plan (kind.py), starting the engine (engine.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.backends.base import (Backend, BackendOption, BackendPlan, Capabilities, ChoicesRequest, ChoicesResult,
                                    Completion, Continuation, Identity, Request, RollingResult)
from pipeline.backends.local_tokenizer import token_counter
from pipeline.backends.transformers.loglikelihood import rolling_windows, split_pair
from pipeline.core.config import SessionConfig
from pipeline.core.reasoning import opens_thinking, split_reasoning
from pipeline.core.records import RuntimePlan
from pipeline.core.streaming import StreamSink
from pipeline.core.thinking import ThinkingPlan
from pipeline.core.tool_calls import parse_tool_calls
from pipeline.data.chat_template import ChatTemplate
from pipeline.data.prompts import adds_special_tokens, render

REQUEST_SETTINGS = ("top_p", "top_k", "min_p", "repetition_penalty")  # a request's own value wins over the plan's


@dataclass
class Output:
    """What one prompt gave, whichever way it was generated (whole, or in parts)."""

    text: str
    tokens: int  # every generated token, the end of turn included
    finish_reason: str  # stop or length
    ttft_s: float
    latency_s: float
    reasoning: str = ""
    reasoning_truncated: bool = False
    reasoning_tokens: int = 0
    answer_tokens: Optional[int] = None
    continuations: int = 0
    ended: bool = False  # its last token is the end of turn (counted in tokens, not text)


class VllmBackend(Backend):
    name = "vllm"

    def __init__(self, plan: RuntimePlan, session: SessionConfig, chat_template: Optional[ChatTemplate] = None,
                 trust_remote_code: bool = False) -> None:
        self.runtime_plan = plan
        self.thinking = ThinkingPlan.from_dict(plan.thinking)
        if self.thinking.template_args:  # the switch the plan chose (enable_thinking, reasoning_effort)
            session = replace(session, template_args={**session.template_args, **self.thinking.template_args})
        self.session = session
        self.chat_template = chat_template
        self.trust_remote_code = trust_remote_code
        self.capabilities = Capabilities(modalities=("text",), tools=True, per_request_seed=True, loglikelihood=True,
                                         thinking_switch=bool(self.thinking.template_args))
        self.llm: Any = None
        self.tokenizer: Any = None
        self._encoded: dict[int, tuple[Request, list[int]]] = {}  # id(request) -> its tokens (count_tokens)
        self._cache_identity: Optional[dict[str, Any]] = None

    # --- what the answering loop reads -------------------------------------------------------------

    @property
    def batch_size(self) -> int:  # type: ignore[override]
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
        """The weights and small files by digest (as the transformers backend), and what the plan fixed for every
        request that can change an answer: the engine options (dtype, context) and the thinking plan."""
        plan = self.runtime_plan
        if not plan.model.weights_digest:
            return None
        if self._cache_identity is None:
            from pipeline.core.digest import model_files_digest

            thinking = {k: v for k, v in self.thinking.to_dict().items() if k not in ("found", "how")}
            self._cache_identity = {
                "backend": self.name, "weights": plan.model.weights_digest,
                "files": model_files_digest(Path(plan.model.path)), "device": plan.device, "dtype": plan.dtype,
                "options": dict(plan.backend_options), "context_length": plan.context_length,
                "truncation": self.session.truncation, "chat_template": self.session.chat_template,
                "thinking": thinking}
        return self._cache_identity

    def cache_prompt(self, request: Any) -> Optional[str]:
        return self._render(request)

    # --- the contract ------------------------------------------------------------------------------

    def plan(self, requests: Sequence[Request]) -> BackendPlan:
        """The engine options the plan chose, with its reasons; prompt tokens counted from the tokenizer's files."""
        plan = self.runtime_plan
        options = [BackendOption(name, value, plan.reasons.get(name, "")) for name, value in plan.backend_options.items()]
        counter = token_counter(Path(plan.model.path)) if requests else None
        special = adds_special_tokens(self.session)
        counts = [counter.count(self._render(request), special) for request in requests] if counter else []
        return BackendPlan(identity=self.identity(), capabilities=self.capabilities, options=options,
                           context_length=self.context_length, prompt_tokens=counts, token_source="tokenizer",
                           checks=list(plan.checks), warnings=list(plan.warnings))

    def load(self) -> None:
        if self.llm is None:
            from pipeline.backends.vllm.engine import start

            self.llm = start(self.runtime_plan.model.path, dict(self.runtime_plan.backend_options))
            self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        if self.llm is not None:
            from pipeline.backends.vllm.engine import stop

            llm, self.llm, self.tokenizer = self.llm, None, None
            stop(llm)
        self._encoded = {}

    def count_tokens(self, requests: Sequence[Request]) -> list[int]:
        """Renders and encodes the prompts, and keeps them for `generate` (a new round replaces them)."""
        self._encoded = {id(request): (request, self._encode(self._render(request))) for request in requests}
        return [len(self._encoded[id(request)][1]) for request in requests]

    def generate(self, requests: Sequence[Request], sink: Optional[StreamSink] = None) -> list[Completion]:
        self._loaded()
        completions: list[Optional[Completion]] = [None] * len(requests)
        rows: list[tuple[int, list[int], bool]] = []  # (index, prompt tokens, cut from the left)
        for index, request in enumerate(requests):
            ids = self._prompt_ids(request)
            fitted = self._fit(request, ids)
            if isinstance(fitted, Completion):
                completions[index] = fitted
            else:
                rows.append((index, fitted, len(fitted) < len(ids)))
        if self.in_parts:
            from pipeline.backends.vllm.parts import generate_in_parts

            outputs = generate_in_parts(self, [requests[i] for i, _, _ in rows], [ids for _, ids, _ in rows])
        else:
            outputs = self._generate_whole([requests[i] for i, _, _ in rows], [ids for _, ids, _ in rows])
        for (index, ids, cut), output in zip(rows, outputs):
            completions[index] = self._completion(requests[index], len(ids), cut, output)
            if sink is not None:
                self._tell(sink, index, completions[index])
        return [c for c in completions if c is not None]

    def loglikelihoods(self, requests: Sequence[ChoicesRequest]) -> list[ChoicesResult]:
        """Each context + continuation scored from vLLM's prompt log-probabilities, in one generate call; the
        tokens split at the boundary as the transformers backend splits them (split_pair, lm-eval's rule)."""
        self._loaded()
        started = time.perf_counter()
        limit = self._limit()
        results, jobs = [], []  # jobs: (result, choice index, context tokens, continuation tokens)
        for request in requests:
            context = render(self.chat_template, request.messages, self.session)
            pairs = [split_pair(self._encode, context, continuation) for continuation in request.continuations]
            result = ChoicesResult(continuations=[Continuation(0.0, False, len(p.continuation), p.merged)
                                                  for p in pairs])
            results.append(result)
            longest = max((len(p.continuation) for p in pairs), default=0)
            if longest >= limit:
                result.error = f"a choice of {longest} tokens does not fit the model's context of {limit} tokens"
                continue
            if any(p.merged and not p.context for p in pairs):
                result.error = "a choice merges with the whole context: nothing to condition it on"
                continue
            for c, pair in enumerate(pairs):
                context_ids = pair.context
                if len(context_ids) + len(pair.continuation) > limit:  # keep the context's end
                    context_ids, result.truncated = context_ids[len(context_ids) + len(pair.continuation) - limit:], True
                result.context_tokens = max(result.context_tokens, len(context_ids))
                jobs.append((result, c, context_ids, pair.continuation))
        scored = self._prompt_logprobs([context + continuation for _, _, context, continuation in jobs])
        for (result, c, context, continuation), positions in zip(jobs, scored):
            picked = positions[len(context):]
            result.continuations[c] = Continuation(sum(p[0] for p in picked), all(p[1] for p in picked),
                                                   len(continuation), result.continuations[c].merged)
        for result in results:
            result.latency_s = time.perf_counter() - started
        return results

    def rolling_loglikelihoods(self, texts: Sequence[str]) -> list[RollingResult]:
        """Each text in lm-eval's rolling windows (as the transformers backend), all windows in one generate call.

        A window's sequence is its inputs and its last predicted token, and vLLM must generate one token after it:
        windows are two tokens shorter than the context, as lm-eval's own vLLM backend makes them (the transformers
        backend's, as lm-eval's hf, are the context): texts longer than a window score a little differently."""
        self._loaded()
        started = time.perf_counter()
        tokenizer = self.tokenizer
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        windows: list[tuple[int, list[int], int]] = []  # (text index, window's tokens, tokens predicted)
        counts = []
        for index, text in enumerate(texts):
            tokens = self._encode(text, False)
            counts.append(len(tokens))
            for inputs, predicted in rolling_windows(tokens, prefix, self._limit() - 1):
                windows.append((index, inputs + predicted[-1:], len(predicted)))
        scored = self._prompt_logprobs([sequence for _, sequence, _ in windows])
        results = [RollingResult(tokens=count) for count in counts]
        for (index, _, predicted), positions in zip(windows, scored):
            results[index].loglikelihood += sum(p[0] for p in positions[-predicted:])
            results[index].windows += 1
        for result in results:
            result.latency_s = time.perf_counter() - started
        return results

    # --- inside ------------------------------------------------------------------------------------

    def _loaded(self) -> Any:
        if self.llm is None:
            raise RuntimeError("the vllm backend generates only after load()")
        return self.llm

    def _render(self, request: Request | ChoicesRequest) -> str:
        return render(self.chat_template, request.messages, self.session, getattr(request, "tools", None) or None)

    def _encode(self, text: str, special: Optional[bool] = None) -> list[int]:
        if self.tokenizer is None:
            raise RuntimeError("the vllm backend encodes only after load()")
        special = adds_special_tokens(self.session) if special is None else special
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _prompt_ids(self, request: Request) -> list[int]:
        known = self._encoded.pop(id(request), None)
        if known is not None and known[0] is request:
            return known[1]
        return self._encode(self._render(request))

    def _limit(self) -> int:
        """The most tokens one scored sequence may have: the engine must also generate one token after it."""
        return (self.context_length or 2048) - 1

    def _fit(self, request: Request, ids: list[int]) -> list[int] | Completion:
        """The prompt's tokens, cut from the left where the session allows it; an error Completion for a prompt
        that leaves no room for its answer."""
        context = self.context_length
        if not context or len(ids) + request.max_new_tokens <= context:
            return ids
        if self.session.truncation == "left" and request.max_new_tokens < context:
            return ids[len(ids) - (context - request.max_new_tokens):]
        return Completion(prompt_tokens=len(ids), finish_reason="error",
                          error=f"{len(ids)} prompt tokens + max_new_tokens={request.max_new_tokens} do not fit the "
                                f"model's context of {context} tokens")

    @property
    def thinks(self) -> bool:
        """Whether the model may think in this run, in tags the parts can be split at."""
        markers = self.thinking.reading_markers
        return self.thinking.can_think and self.thinking.mode != "off" and markers is not None \
            and markers.format == "tags"

    @property
    def in_parts(self) -> bool:
        """Whether answers are generated in parts: a model that may think (its thinking bounded on its own, the
        answer by max_new_tokens), or answers cut by length continued."""
        return self.thinks or self.thinking.continue_on_length > 0

    def sampling(self, request: Request, max_tokens: Optional[int], stop: Sequence[str]) -> Any:
        """vLLM's SamplingParams for one request: the plan's effective settings, the request's own over them."""
        from vllm import SamplingParams

        settings = dict(self.runtime_plan.generation)
        settings.update({name: getattr(request, name) for name in REQUEST_SETTINGS if getattr(request, name) is not None})
        options: dict[str, Any] = {"max_tokens": max_tokens, "stop": list(stop), "skip_special_tokens": True,
                                   "repetition_penalty": float(settings.get("repetition_penalty") or 1.0)}
        if request.temperature > 0:
            seed = request.seed if request.seed is not None else settings.get("seed")
            options.update(temperature=float(request.temperature), seed=seed,
                           top_p=float(settings.get("top_p") or 1.0), top_k=int(settings.get("top_k") or 0),
                           min_p=float(settings.get("min_p") or 0.0))
        else:
            options["temperature"] = 0.0
        return SamplingParams(**options)

    def run(self, prompts: Sequence[list[int]], params: Sequence[Any]) -> tuple[list[Any], float, float]:
        """One llm.generate call: (outputs, when it started, when it ended), times on the monotonic clock."""
        from vllm.inputs import TokensPrompt

        started = time.monotonic()
        outputs = self._loaded().generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts], list(params),
                                          use_tqdm=False)
        return outputs, started, time.monotonic()

    def _generate_whole(self, requests: Sequence[Request], prompts: list[list[int]]) -> list[Output]:
        if not requests:
            return []
        outputs, started, ended = self.run(prompts, [self.sampling(r, r.max_new_tokens, r.stop) for r in requests])
        results = []
        for output in outputs:
            generated = output.outputs[0]
            ttft, latency = timing(output, started, ended)
            stopped = generated.finish_reason != "length"
            results.append(Output(generated.text, len(generated.token_ids), "stop" if stopped else "length", ttft,
                                  latency, ended=stopped and not isinstance(generated.stop_reason, str)))
        return results

    def _prompt_logprobs(self, sequences: list[list[int]]) -> list[list[tuple[float, bool]]]:
        """(log-probability, is the likeliest token) of each token of each sequence after the first."""
        from vllm import SamplingParams

        if not sequences:
            return []
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs, _, _ = self.run(sequences, [params] * len(sequences))
        scored = []
        for sequence, output in zip(sequences, outputs):
            positions = [(0.0, True)]  # the first token has no log-probability: nothing before it
            for token, ranked in zip(sequence[1:], output.prompt_logprobs[1:]):
                logprob = ranked[token]
                positions.append((float(logprob.logprob), logprob.rank == 1))
            scored.append(positions)
        return scored

    def _completion(self, request: Request, prompt_tokens: int, cut: bool, output: Output) -> Completion:
        completion = Completion(text=output.text, prompt_tokens=prompt_tokens, completion_tokens=output.tokens,
                                finish_reason=output.finish_reason, ttft_s=output.ttft_s, latency_s=output.latency_s,
                                truncated=cut, reasoning=output.reasoning, reasoning_truncated=output.reasoning_truncated,
                                reasoning_tokens=output.reasoning_tokens, answer_tokens=output.answer_tokens,
                                continuations=output.continuations)
        markers = self.thinking.reading_markers if self.thinking.can_think else None
        if markers is not None and not self.in_parts:  # thinking off: what the model still wrote in tags is split
            split = split_reasoning(output.text, markers, opens_thinking(self._render(request), markers))
            completion.text, completion.reasoning, completion.reasoning_truncated = \
                split.answer, split.reasoning, split.truncated
            if split.thought:  # tags it was not asked for: the texts counted
                completion.reasoning_tokens = len(self._encode(split.reasoning, False))
                completion.answer_tokens = len(self._encode(split.answer, False))
            else:  # as the transformers backend counts a model that did not think: the end of turn left out
                completion.reasoning_tokens, completion.answer_tokens = 0, output.tokens - output.ended
        if request.tools:  # the calls are in the text, in the chat template's markup; the prefill starts the answer
            parsed = parse_tool_calls(self.session.prefill + completion.text)
            if parsed.wants_tools:
                completion.tool_calls, completion.tool_problems = parsed.calls, parsed.problems
                completion.message_text = parsed.text
                completion.finish_reason = "tool" if parsed.calls and output.finish_reason == "stop" else \
                    output.finish_reason
        return completion

    @staticmethod
    def _tell(sink: StreamSink, row: int, completion: Completion) -> None:
        """Not streamed: the sink is told each answer once, whole (its reasoning first, where it listens)."""
        if completion.reasoning and hasattr(sink, "on_reasoning"):
            sink.on_reasoning(row, completion.reasoning)
        if completion.text and getattr(sink, "streams_text", True):
            sink.on_text(row, completion.text)
        sink.on_complete(row, completion.text)


def timing(output: Any, started: float, ended: float) -> tuple[float, float]:
    """(time to first token, latency) of one request of a generate call: from the engine's own timestamps where it
    keeps them (log stats on), else the call's whole time for both."""
    metrics = getattr(output, "metrics", None)
    first, last = getattr(metrics, "first_token_ts", 0.0), getattr(metrics, "last_token_ts", 0.0)
    if first and last and started < first <= last:
        return first - started, last - started
    return ended - started, ended - started
