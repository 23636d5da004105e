"""POST /v1/chat/completions: chat template -> one engine request with n choices -> chat.completion(.chunk) bodies.

With tools (server.tool_calls) the reply is read back into `message.tool_calls` (streamed as `delta.tool_calls`), and
`finish_reason` is "tool_calls" when the model called one; with `response_format` or a forced tool call the engine
constrains the output to the schema (engine.structured).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from engine.outputs import TokenLogprob
from server.errors import BadRequestError
from server.finish_reason import FinishReason
from server.protocol import ChatCompletionRequest
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
from server.tool_calls import ToolPlan, ToolStreamer, call_dict, template_messages


@dataclass
class ChatContext(RequestContext):
    tools: ToolPlan | None = None  # whose calls are read back from the reply; None when nothing renders tools


class ChatServing(Serving[ChatCompletionRequest, ChatContext]):
    endpoint = "chat"
    id_prefix = "chatcmpl"
    context_type = ChatContext

    async def submit(self, req: ChatCompletionRequest, ctx: ChatContext, rec: RequestRecord) -> list[Any]:
        engine = self.state.require_engine()
        self.state.check_model(req.model)
        req.check_supported()
        params = req.to_sampling_params()
        plan = req.tool_plan()
        if plan is not None:
            plan.bind_template(getattr(self.state.tokenizer, "chat_template", None))
        messages = template_messages(req.chat_messages(), plan)
        prompt_ids = await self.state.off_loop(self._render, messages, plan,
                                               size=sum(len(m["content"]) for m in messages))
        rec.prompt_tokens = len(prompt_ids)
        if self.state.settings.server.log_prompts:
            rec.prompt = messages
        ctx.logprobs = params.logprobs is not None
        ctx.tools = plan if plan is not None and plan.renders_tools else None
        return [engine.add_request(prompt_ids, params, request_id=ctx.id)]  # the engine checks the request

    def _render(self, messages: list[dict[str, Any]], plan: ToolPlan | None) -> list[int]:
        """The chat template over `messages`; a template that renders tools also gets `tools=`."""
        if plan is None or not plan.renders_tools or not plan.native:
            return self.state.render_chat(messages)
        tok = self.state.tokenizer
        try:
            text = tok.apply_chat_template(messages, tools=[t.as_openai() for t in plan.tools],
                                           add_generation_prompt=True, tokenize=False)
        except Exception as e:  # template raised (roles must alternate, a tool message it cannot place, ...)
            raise BadRequestError(f"the chat template rejected these messages: {e}", param="messages") from None
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def _logprobs(self, logprobs: list[TokenLogprob] | None) -> list[dict[str, Any]]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.state.token_text(token_id)
            return {"token": text, "logprob": finite_logprob(logprob), "bytes": self.state.token_bytes(token_id)}

        return [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t.token_id, t.logprob) for t in lp.top]}
                for lp in logprobs or []]

    def _envelope(self, ctx: ChatContext, obj: str) -> dict[str, Any]:
        return {"id": ctx.id, "object": obj, "created": ctx.created, "model": self.state.model_name,
                "system_fingerprint": None}

    async def collect(self, run: EngineRun, req: ChatCompletionRequest, ctx: ChatContext,
                      rec: RequestRecord) -> dict[str, Any]:
        texts = [""] * req.n
        logprobs: list[list[dict[str, Any]]] = [[] for _ in range(req.n)]
        finish: list[FinishReason | None] = [None] * req.n
        usage = UsageTally()
        async for i, out in run.outputs():
            rec.observe(out)
            usage.add(i, out)
            check_output(out)
            texts[out.index] += out.text
            if ctx.logprobs:
                logprobs[out.index] += self._logprobs(out.logprobs)
            if out.finished:
                finish[out.index] = FinishReason.of(out)
        choices = []
        for k in range(req.n):
            message: dict[str, Any] = {"role": "assistant", "content": texts[k], "refusal": None}
            plan = ctx.tools
            if plan is not None:
                content, calls = plan.read(texts[k])
                if calls:
                    message["content"] = content
                    message["tool_calls"] = [call_dict(-1, name, args) for name, args in calls]
                    finish[k] = FinishReason.TOOL_CALLS if finish[k] is FinishReason.STOP else finish[k]
            choices.append({
                "index": k,
                "message": message,
                "logprobs": {"content": logprobs[k], "refusal": None} if ctx.logprobs else None,
                "finish_reason": finish[k],
            })
        return {**self._envelope(ctx, "chat.completion"), "choices": choices, "usage": usage.as_dict()}

    async def chunks(self, run: EngineRun, req: ChatCompletionRequest, ctx: ChatContext,
                     rec: RequestRecord) -> AsyncIterator[str]:
        env = self._envelope(ctx, "chat.completion.chunk")
        for k in range(req.n):
            yield sse({**env, "choices": [{"index": k, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}]})
        streamers = [ToolStreamer(ctx.tools) for _ in range(req.n)] if ctx.tools is not None else None
        usage = UsageTally()
        async for i, out in run.outputs():
            rec.observe(out)
            usage.add(i, out)
            check_output(out)
            if not out.text and not out.finished and not (ctx.logprobs and out.logprobs):
                continue
            logprobs = {"content": self._logprobs(out.logprobs), "refusal": None} if ctx.logprobs else None
            if streamers is None:
                deltas = [{"content": out.text}] if out.text else []
            else:
                st = streamers[out.index]
                deltas = st.feed(out.text)
                if out.finished:
                    deltas += st.finish()
            reason = FinishReason.of(out)
            if reason is FinishReason.STOP and streamers is not None and streamers[out.index].num_calls:
                reason = FinishReason.TOOL_CALLS
            if not deltas:
                if not out.finished and logprobs is None:
                    continue  # text held back by the tool-call streamer
                deltas = [{}]
            for j, delta in enumerate(deltas):
                last = j == len(deltas) - 1
                yield sse({**env, "choices": [{
                    "index": out.index, "delta": delta, "logprobs": logprobs if j == 0 else None,
                    "finish_reason": reason if last else None}]})
        if req.include_usage:
            yield sse({**env, "choices": [], "usage": usage.as_dict()})
