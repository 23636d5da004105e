"""Typed errors the engine raises; the server maps each to an HTTP status and OpenAI's error shape.

Every error carries `param` (the request field at fault, or None) so the server can fill OpenAI's `error.param`.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class. `code` is the machine-readable OpenAI `error.code`."""

    code = "engine_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


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
