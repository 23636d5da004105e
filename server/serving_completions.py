"""POST /v1/completions: one engine request per prompt (string, strings, token ids, lists of token ids), n choices
each; choice index = prompt index * n + choice index, as OpenAI numbers them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from engine.outputs import TokenLogprob
from server.errors import BadRequestError
from server.finish_reason import FinishReason
from server.protocol import CompletionRequest
from server.request_log import RequestRecord
from server.serving_common import (
    EngineRun,
    RequestContext,
    Serving,
    UsageTally,
    check_output,
    finite_logprob,
    sse,
)


@dataclass
class CompletionContext(RequestContext):
    echo: list[str] = field(default_factory=list)  # per prompt: its text when `echo` is on, else ""
    num_choices: int = 0  # prompts x n


class CompletionServing(Serving[CompletionRequest, CompletionContext]):
    endpoint = "completions"
    id_prefix = "cmpl"
    context_type = CompletionContext

    async def submit(self, req: CompletionRequest, ctx: CompletionContext, rec: RequestRecord) -> list[Any]:
        engine = self.state.require_engine()
        self.state.check_model(req.model)
        req.check_supported()
        params = req.to_sampling_params()
        prompts = req.prompts()
        if len(prompts) * params.n > self.state.settings.server.max_n * 8:
            raise BadRequestError(f"too many completions in one request ({len(prompts)} prompts x n={params.n})",
                                  param="prompt")
        ids_list, texts = [], []
        for j, p in enumerate(prompts):
            if isinstance(p, str):
                ids = await self.state.off_loop(self.state.encode, p, size=len(p))
                text = p
            else:
                bad = [t for t in p if not 0 <= t < engine.vocab_size]
                if bad:
                    raise BadRequestError(f"prompt token id {bad[0]} is not in the vocabulary "
                                          f"(0..{engine.vocab_size - 1})", param="prompt")
                ids = list(p)
                text = await self.state.off_loop(self.state.decode, ids, size=len(ids)) if req.echo else ""
            if not ids:
                raise BadRequestError(f"prompt {j} is empty", param="prompt")
            ids_list.append(ids)
            texts.append(text)
        rec.prompt_tokens = sum(len(x) for x in ids_list)
        if self.state.settings.server.log_prompts:
            rec.prompt = prompts
        ctx.echo = texts if req.echo else [""] * len(prompts)
        ctx.logprobs = params.logprobs is not None
        ctx.num_choices = len(prompts) * params.n
        streams: list[Any] = []
        try:
            for j, ids in enumerate(ids_list):
                rid = ctx.id if len(ids_list) == 1 else f"{ctx.id}-{j}"
                streams.append(engine.add_request(ids, params, request_id=rid))  # the engine checks the request
        except Exception:
            for s in streams:  # all or nothing: a later prompt was refused (queue full ...)
                s.abort()
            raise
        return streams

    def _logprobs(self, logprobs: list[TokenLogprob] | None, offset: int) -> tuple[dict[str, Any], int]:
        """Completions-shape logprobs for a run of tokens whose text starts at `offset`; returns the next offset."""
        tokens, token_lps, tops, offsets = [], [], [], []
        for lp in logprobs or []:
            text = self.state.token_text(lp.token_id)
            tokens.append(text)
            token_lps.append(finite_logprob(lp.logprob))
            tops.append({self.state.token_text(t.token_id): finite_logprob(t.logprob) for t in lp.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}, offset

    def _envelope(self, ctx: CompletionContext) -> dict[str, Any]:
        return {"id": ctx.id, "object": "text_completion", "created": ctx.created,
                "model": self.state.model_name, "system_fingerprint": None}

    async def collect(self, run: EngineRun, req: CompletionRequest, ctx: CompletionContext,
                      rec: RequestRecord) -> dict[str, Any]:
        n = req.n
        total = ctx.num_choices
        texts = [ctx.echo[k // n] for k in range(total)]
        offsets = [len(t) for t in texts]
        lps: list[dict[str, list[Any]]] = [
            {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} for _ in range(total)]
        finish: list[FinishReason | None] = [None] * total
        usage = UsageTally()
        async for i, out in run.outputs():
            rec.observe(out)
            usage.add(i, out)
            check_output(out)
            k = i * n + out.index
            texts[k] += out.text
            if ctx.logprobs:
                part, offsets[k] = self._logprobs(out.logprobs, offsets[k])
                for key, values in part.items():
                    lps[k][key] += values
            if out.finished:
                finish[k] = FinishReason.of(out)
        choices = [{"index": k, "text": texts[k], "logprobs": lps[k] if ctx.logprobs else None,
                    "finish_reason": finish[k]} for k in range(total)]
        return {**self._envelope(ctx), "choices": choices, "usage": usage.as_dict()}

    async def chunks(self, run: EngineRun, req: CompletionRequest, ctx: CompletionContext,
                     rec: RequestRecord) -> AsyncIterator[str]:
        n = req.n
        env = self._envelope(ctx)
        offsets = [len(ctx.echo[k // n]) for k in range(ctx.num_choices)]
        if req.echo:
            for k in range(ctx.num_choices):
                yield sse({**env, "choices": [{"index": k, "text": ctx.echo[k // n], "logprobs": None,
                                               "finish_reason": None}]})
        usage = UsageTally()
        async for i, out in run.outputs():
            rec.observe(out)
            usage.add(i, out)
            check_output(out)
            if not out.text and not out.finished and not (ctx.logprobs and out.logprobs):
                continue
            k = i * n + out.index
            logprobs = None
            if ctx.logprobs:
                logprobs, offsets[k] = self._logprobs(out.logprobs, offsets[k])
            yield sse({**env, "choices": [{"index": k, "text": out.text, "logprobs": logprobs,
                                           "finish_reason": FinishReason.of(out)}]})
        if req.include_usage:
            yield sse({**env, "choices": [], "usage": usage.as_dict()})
