"""POST /v1/chat/completions: chat template -> one engine request with n choices -> chat.completion(.chunk) bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from engine.outputs import TokenLogprob
from server.protocol import ChatCompletionRequest
from server.request_log import RequestRecord
from server.serving_common import EngineRun, Serving, UsageTally, check_output, finite_logprob, sse


class ChatServing(Serving):
    endpoint = "chat"
    id_prefix = "chatcmpl"

    async def submit(self, req: ChatCompletionRequest, ctx: dict[str, Any], rec: RequestRecord) -> list[Any]:
        engine = self.state.require_engine()
        self.state.check_model(req.model)
        req.check_supported()
        params = req.to_sampling_params()
        self.state.check_params(params)
        messages = req.chat_messages()
        prompt_ids = await self.state.off_loop(self.state.render_chat, messages,
                                               size=sum(len(m["content"]) for m in messages))
        rec.prompt_tokens = len(prompt_ids)
        if self.state.settings.server.log_prompts:
            rec.prompt = messages
        ctx["logprobs"] = params.logprobs is not None
        return [engine.add_request(prompt_ids, params, request_id=ctx["id"])]

    def _logprobs(self, logprobs: list[TokenLogprob] | None) -> list[dict[str, Any]]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.state.token_text(token_id)
            return {"token": text, "logprob": finite_logprob(logprob), "bytes": self.state.token_bytes(token_id)}

        return [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t.token_id, t.logprob) for t in lp.top]}
                for lp in logprobs or []]

    def _envelope(self, ctx: dict[str, Any], obj: str) -> dict[str, Any]:
        return {"id": ctx["id"], "object": obj, "created": ctx["created"], "model": self.state.model_name,
                "system_fingerprint": None}

    async def collect(self, run: EngineRun, req: ChatCompletionRequest, ctx: dict[str, Any],
                      rec: RequestRecord) -> dict[str, Any]:
        texts = [""] * req.n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(req.n)]
        finish: list[str | None] = [None] * req.n
        usage = UsageTally()
        async for i, out in run.outputs():
            rec.observe(out)
            usage.add(i, out)
            check_output(out)
            texts[out.index] += out.text
            if ctx["logprobs"]:
                logprobs[out.index] += self._logprobs(out.logprobs)
            if out.finished:
                finish[out.index] = out.finish_reason
        choices = [
            {
                "index": k,
                "message": {"role": "assistant", "content": texts[k], "refusal": None},
                "logprobs": {"content": logprobs[k], "refusal": None} if ctx["logprobs"] else None,
                "finish_reason": finish[k],
            }
            for k in range(req.n)
        ]
        return {**self._envelope(ctx, "chat.completion"), "choices": choices, "usage": usage.as_dict()}

    async def chunks(self, run: EngineRun, req: ChatCompletionRequest, ctx: dict[str, Any],
                     rec: RequestRecord) -> AsyncIterator[str]:
        env = self._envelope(ctx, "chat.completion.chunk")
        for k in range(req.n):
            yield sse({**env, "choices": [{"index": k, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}]})
        usage = UsageTally()
        async for i, out in run.outputs():
            rec.observe(out)
            usage.add(i, out)
            check_output(out)
            if not out.text and not out.finished and not (ctx["logprobs"] and out.logprobs):
                continue
            choice: dict[str, Any] = {
                "index": out.index,
                "delta": {"content": out.text} if out.text else {},
                "logprobs": {"content": self._logprobs(out.logprobs), "refusal": None} if ctx["logprobs"] else None,
                "finish_reason": out.finish_reason if out.finished else None,
            }
            yield sse({**env, "choices": [choice]})
        if req.include_usage:
            yield sse({**env, "choices": [], "usage": usage.as_dict()})
