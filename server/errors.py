"""OpenAI's error shape and the mapping from every failure to an HTTP status.

Every error response, whatever raised it, is `{"error": {"message", "type", "param", "code"}}` with the status below.
Engine errors (engine/errors.py) are mapped by a table, most specific class first; server-side failures are
`APIError` subclasses that carry their own status. Anything else is a 500 in the same shape, never a crash.

    400 invalid_request_error   bad JSON, bad parameters, prompt too long, unsupported feature
    401 authentication_error    missing/wrong API key (code invalid_api_key)
    404 invalid_request_error   unknown model (code model_not_found) or route
    413 invalid_request_error   body larger than server.max_body_bytes
    429 rate_limit_error        queue full (Retry-After header)
    500 server_error            engine failure, unexpected exception
    503 service_unavailable     loading, draining, engine stopped (Retry-After header)
    504 server_error            request_timeout: the per-request deadline passed
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import (
    EngineError,
    EngineStoppedError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    RequestFailedError,
    RunnerError,
)
from server.request_log import RequestRecord

log = logging.getLogger("specserve.server")

RETRY_AFTER_QUEUE_FULL_S = 1
RETRY_AFTER_UNAVAILABLE_S = 5


class APIError(Exception):
    """An error response the server decides on itself (not raised by the engine)."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequestError(APIError):
    code = "invalid_request"


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFoundError(APIError):
    status = 404
    code = "model_not_found"


class RouteNotFoundError(APIError):
    status = 404
    code = "not_found"


class BodyTooLargeError(APIError):
    status = 413
    code = "request_too_large"


class ServiceUnavailableError(APIError):
    status = 503
    type = "service_unavailable_error"
    code = "engine_unavailable"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)})


class RequestTimeoutError(APIError):
    status = 504
    type = "server_error"
    code = "request_timeout"


class ClientDisconnectedError(Exception):
    """The client went away; nobody is left to answer (logged as status 499)."""


# Engine error class -> (status, OpenAI error type, extra headers). Most specific first.
_ENGINE_ERRORS: list[tuple[type[EngineError], int, str, dict[str, str]]] = [
    (PromptTooLongError, 400, "invalid_request_error", {}),
    (InvalidRequestError, 400, "invalid_request_error", {}),
    (QueueFullError, 429, "rate_limit_error", {"Retry-After": str(RETRY_AFTER_QUEUE_FULL_S)}),
    (EngineStoppedError, 503, "service_unavailable_error", {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)}),
    (RequestFailedError, 500, "server_error", {}),
    (RunnerError, 500, "server_error", {}),
    (EngineError, 500, "server_error", {}),
]


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def describe(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, OpenAI error body, headers) for any exception."""
    if isinstance(exc, APIError):
        return exc.status, error_body(exc.message, exc.type, exc.param, exc.code), exc.headers
    if isinstance(exc, EngineError):
        for cls, status, type_, headers in _ENGINE_ERRORS:
            if isinstance(exc, cls):
                return status, error_body(exc.message, type_, exc.param, exc.code), dict(headers)
    if isinstance(exc, ClientDisconnectedError):
        return 499, error_body("client disconnected", "invalid_request_error", None, "client_disconnected"), {}
    return 500, error_body("internal server error", "server_error", None, "internal_error"), {}


def status_of(exc: BaseException) -> int:
    return describe(exc)[0]


def error_response(exc: BaseException) -> JSONResponse:
    status, body, headers = describe(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def sse_error_event(exc: BaseException) -> str:
    """The SSE event sent when a stream fails after its headers went out (then `data: [DONE]`)."""
    status, body, _ = describe(exc)
    body["error"]["status"] = status
    return f"data: {json.dumps(body)}\n\n"


def validation_error_from_pydantic(e: ValidationError | RequestValidationError) -> BadRequestError:
    """First pydantic error as a 400 naming the field: never FastAPI's bare 422."""
    errs = e.errors()
    if not errs:
        return BadRequestError("invalid request")
    first = errs[0]
    loc = [str(x) for x in first.get("loc", ()) if x not in ("body",)]
    # Drop pydantic's union-branch names ("str", "list[...]") so `param` is the request field as the client wrote it.
    loc = [x for x in loc if not x.startswith(("str", "list[", "int", "function-", "is-instance", "literal["))]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    more = f" (and {len(errs) - 1} more errors)" if len(errs) > 1 else ""
    return BadRequestError(f"{param}: {msg}{more}" if param else f"{msg}{more}", param=param)


def _log_unserved(request: Request, exc: BaseException) -> None:
    """A /v1 request refused before it reached an endpoint's serving code (auth, body, JSON) still gets its line."""
    if not request.url.path.startswith("/v1/") or getattr(request.state, "specserve_logged", False):
        return
    state = getattr(request.app.state, "specserve", None)
    status, body, _ = describe(exc)
    rec = RequestRecord("-", request.url.path, listeners=list(getattr(state, "listeners", [])))
    rec.fail(status, body["error"]["message"])
    rec.emit()


def install_handlers(app: FastAPI) -> None:
    """Route every failure through `describe` so all errors share OpenAI's shape."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        _log_unserved(request, exc)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        err = validation_error_from_pydantic(exc)
        _log_unserved(request, err)
        return error_response(err)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(RouteNotFoundError(f"no route for {request.method} {request.url.path}"))
        if exc.status_code == 405:
            err = APIError(f"method {request.method} not allowed on {request.url.path}", code="method_not_allowed")
            err.status = 405
            return error_response(err)
        err = APIError(str(exc.detail), code=None)
        err.status = exc.status_code
        return error_response(err)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        _log_unserved(request, exc)
        return error_response(exc)

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(EngineError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
