"""Typed errors the engine raises; the server maps each to an HTTP status and OpenAI's error shape.

Every error carries `field`: the request field at fault in the engine's own names (a `SamplingParams` attribute, or
"prompt"), or None. HTTP names differ by endpoint (chat's "messages" and "top_logprobs" are the engine's "prompt" and
"logprobs"); the server maps `field` to OpenAI's `error.param` in one place and stores it in `param`, which starts out
equal to `field`.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class. `code` is the machine-readable OpenAI `error.code`."""

    code = "engine_error"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.param = field  # the HTTP field name, set by the server for its endpoint


class InvalidRequestError(EngineError):
    """The request cannot be served as given (HTTP 400)."""

    code = "invalid_request"


class PromptTooLongError(InvalidRequestError):
    """Prompt (plus the tokens it must generate) does not fit `max_model_len` (HTTP 400)."""

    code = "context_length_exceeded"


class QueueFullError(EngineError):
    """Every slot is busy and the waiting queue is full (HTTP 429 with Retry-After)."""

    code = "queue_full"


class EngineStoppedError(EngineError):
    """The engine is draining or stopped and admits no new work (HTTP 503)."""

    code = "engine_unavailable"


class RequestFailedError(EngineError):
    """One request failed inside the engine (sampling, detokenization); the batch went on (HTTP 500 / stream error)."""

    code = "request_failed"


class RunnerError(EngineError):
    """The model runner failed; the engine is unhealthy (HTTP 500, /health reports it)."""

    code = "runner_failed"
