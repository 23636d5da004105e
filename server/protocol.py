"""Request models for the OpenAI-compatible endpoints and the mapping from a request to `SamplingParams`.

Unknown fields are ignored (the OpenAI SDK sends extras); fields specserve cannot honour (the legacy `functions` /
`function_call`, `suffix`, image content) are refused with a 400 naming them, never ignored silently. `response_format`
(server.structured) and `tools` / `tool_choice` (server.tool_calls) are validated by their own modules.
Response bodies are built as plain dicts in the serving modules, in OpenAI's shapes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.sampling.params import SamplingParams
from engine.structured.spec import GrammarSpec
from server.errors import BadRequestError
from server.structured import response_format_spec
from server.tool_calls import ToolPlan


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingFields(_Request):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Extensions (vLLM names), sent by the SDK through `extra_body`.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    speculative: bool | None = None

    def _common_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            n=self.n,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens or 0,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            logit_bias=_logit_bias(self.logit_bias),
            seed=self.seed,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=bool(self.ignore_eos),
            logprobs=logprobs,
            speculative=True if self.speculative is None else self.speculative,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (raw or {}).items():
        try:
            tok = int(key)
        except (TypeError, ValueError):
            raise BadRequestError(f"logit_bias keys must be token ids (integers as strings), got {key!r}",
                                  param="logit_bias") from None
        out[tok] = value
    return out


# ----------------------------------------------------------------------------------------------- chat completions


class TextPart(_Request):
    type: str
    text: str | None = None


class ToolCallFunction(_Request):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Request):
    id: str | None = None
    type: str = "function"
    function: ToolCallFunction


class ChatMessage(_Request):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a role "tool" message: the call it answers


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None  # server.tool_calls.ToolPlan validates them
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None  # server.structured
    # The legacy (pre-tools) function-calling fields: refused (400), declared so the refusal can name them.
    functions: list[Any] | None = None
    function_call: Any = None

    def check_supported(self) -> None:
        if self.functions:
            raise BadRequestError("functions (legacy function calling) is not supported; use tools", param="functions")
        if self.function_call not in (None, "none"):
            raise BadRequestError("function_call (legacy) is not supported; use tool_choice", param="function_call")
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequestError("top_logprobs requires logprobs=true", param="top_logprobs")
        self.tool_plan()
        self.grammar()

    def tool_plan(self) -> ToolPlan | None:
        """The request's tools and tool_choice, validated; None without tools."""
        return ToolPlan.from_request(self.tools, self.tool_choice, self.parallel_tool_calls)

    def grammar(self) -> GrammarSpec | None:
        """What the output is constrained to: the forced tool call's schema, else response_format, else nothing."""
        plan = self.tool_plan()
        from_tools = plan.grammar() if plan is not None else None
        from_format = response_format_spec(self.response_format)
        if from_tools is not None and from_format is not None:
            raise BadRequestError("response_format cannot be combined with tool_choice 'required' or a named "
                                  "function (the call's arguments already follow the function's schema)",
                                  param="response_format")
        return from_tools or from_format

    def to_sampling_params(self) -> SamplingParams:
        # max_completion_tokens supersedes the deprecated max_tokens; None = until the context is full.
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        params = self._common_params(max_tokens, logprobs)
        params.structured = self.grammar()
        return params

    def chat_messages(self) -> list[dict[str, Any]]:
        """Messages as plain dicts for the tokenizer's chat template: {role, content}, plus `tool_calls` on an
        assistant turn that called tools and `tool_call_id` on a tool result (server.tool_calls shapes them)."""
        out: list[dict[str, Any]] = []
        for i, m in enumerate(self.messages):
            role = "system" if m.role == "developer" else m.role
            if role not in ("system", "user", "assistant", "tool"):
                raise BadRequestError(f"messages[{i}].role {m.role!r} is not supported (system, user, assistant, "
                                      "tool)", param=f"messages.{i}.role")
            if m.tool_calls and role != "assistant":
                raise BadRequestError(f"messages[{i}]: only assistant messages carry tool_calls",
                                      param=f"messages.{i}.tool_calls")
            if role == "tool" and not m.tool_call_id:  # OpenAI: a tool result names the call it answers
                raise BadRequestError(f"messages[{i}]: a 'tool' message needs tool_call_id (the id of the assistant's "
                                      "tool call it answers)", param=f"messages.{i}.tool_call_id")
            if m.content is None and not m.tool_calls:
                raise BadRequestError(f"messages[{i}].content is required", param=f"messages.{i}.content")
            if m.content is None:
                text = None
            elif isinstance(m.content, str):
                text = m.content
            else:
                parts = []
                for j, part in enumerate(m.content):
                    if part.type != "text" or part.text is None:
                        raise BadRequestError(
                            f"messages[{i}].content[{j}]: only text content parts are supported, got {part.type!r}",
                            param=f"messages.{i}.content.{j}")
                    parts.append(part.text)
                text = "".join(parts)
            msg: dict[str, Any] = {"role": role, "content": text}
            if m.tool_calls:
                msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.function.name, "arguments": c.function.arguments}} for c in m.tool_calls]
            if role == "tool" and m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            out.append(msg)
        return out


# ---------------------------------------------------------------------------------------------------- completions

PromptType = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_SamplingFields):
    prompt: PromptType
    max_tokens: int | None = 16  # OpenAI's default for /v1/completions
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None
    response_format: dict[str, Any] | None = None  # server.structured (an extension here, as in vLLM)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, v: Any) -> Any:
        ok = isinstance(v, str) or (isinstance(v, list) and (
            all(isinstance(x, str) for x in v)
            or all(isinstance(x, int) and not isinstance(x, bool) for x in v)
            or all(isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x) for x in v)))
        if not ok:
            raise ValueError("must be a string, a list of strings, a list of token ids or a list of token-id lists")
        return v

    def check_supported(self) -> None:
        if self.suffix:
            raise BadRequestError("suffix (fill-in-the-middle) is not supported by specserve", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise BadRequestError("best_of is not supported (use n)", param="best_of")
        if self.echo and self.logprobs is not None:
            raise BadRequestError("echo together with logprobs is not supported (no prompt logprobs)", param="echo")
        response_format_spec(self.response_format)

    def to_sampling_params(self) -> SamplingParams:
        params = self._common_params(self.max_tokens, self.logprobs)
        params.structured = response_format_spec(self.response_format)
        return params

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts, each a string or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise BadRequestError("prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

