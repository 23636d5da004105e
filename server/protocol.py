"""Request models for the OpenAI-compatible endpoints and the mapping from a request to `SamplingParams`.

Unknown fields are ignored (the OpenAI SDK sends extras); fields specserve cannot honour (`tools`, `functions`,
`response_format` other than text, `suffix`, image content) are refused with a 400 naming them, never ignored silently.
Response bodies are built as plain dicts in the serving modules, in OpenAI's shapes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.sampling.params import SamplingParams
from server.errors import BadRequestError


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


class ChatMessage(_Request):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Refused (400) when set to anything meaningful; declared so the refusal can name them.
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None

    def check_supported(self) -> None:
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise BadRequestError(f"{name} (function calling) is not supported by specserve", param=name)
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none"):
                raise BadRequestError(f"{name} is not supported by specserve (no function calling)", param=name)
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise BadRequestError(
                f"response_format {self.response_format.get('type')!r} is not supported; only {{'type': 'text'}}",
                param="response_format")
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequestError("top_logprobs requires logprobs=true", param="top_logprobs")

    def to_sampling_params(self) -> SamplingParams:
        # max_completion_tokens supersedes the deprecated max_tokens; None = until the context is full.
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._common_params(max_tokens, logprobs)

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages as plain {role, content} dicts for the tokenizer's chat template."""
        out = []
        for i, m in enumerate(self.messages):
            role = "system" if m.role == "developer" else m.role
            if role not in ("system", "user", "assistant"):
                raise BadRequestError(f"messages[{i}].role {m.role!r} is not supported (system, user, assistant)",
                                      param=f"messages.{i}.role")
            if m.tool_calls:
                raise BadRequestError("tool_calls are not supported by specserve", param=f"messages.{i}.tool_calls")
            if m.content is None:
                raise BadRequestError(f"messages[{i}].content is required", param=f"messages.{i}.content")
            if isinstance(m.content, str):
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
            out.append({"role": role, "content": text})
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

    def to_sampling_params(self) -> SamplingParams:
        return self._common_params(self.max_tokens, self.logprobs)

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

