"""Thin routes: parse the body, hand it to the serving object, return what it returns. No logic lives here."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from server.auth import require_api_key
from server.errors import (
    BadRequestError,
    BodyTooLargeError,
    ModelNotFoundError,
    validation_error_from_pydantic,
)
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.state import ServerState

M = TypeVar("M", bound=BaseModel)

router = APIRouter()
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def _state(request: Request) -> ServerState:
    return request.app.state.specserve


async def read_json(request: Request, model: type[M]) -> M:
    """Read the body (at most server.max_body_bytes, also when chunked) and validate it: 400/413, never 422."""
    limit = _state(request).settings.server.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"request body is not valid JSON: {e}") from None
    except RecursionError:  # json.loads gives up past ~1000 levels of [ or {: a 500 before this
        raise BadRequestError("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        raise BadRequestError("request body has a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not "
                              "valid Unicode text")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error_from_pydantic(e) from None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \uD800..\uDFFF


def _has_lone_surrogate(data: Any) -> bool:
    """JSON may escape half a surrogate pair ("\\udc00"); json.loads turns it into a str that cannot be encoded as
    UTF-8, and the tokenizer (or the response encoder) then raised a 500. Iterative: the nesting may be deep."""
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 {"status": "ok", "running", "waiting", "free_slots", "num_slots", "model"} when ready; 503 otherwise
    (status "loading", "draining", "failed" or "unhealthy")."""
    status, body = _state(request).health()
    return JSONResponse(body, status_code=status)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format from the app's own registry (server/metrics.py)."""
    return Response(request.app.state.metrics.expose(), media_type=CONTENT_TYPE_LATEST)


def _model_card(request: Request) -> dict[str, Any]:
    state = _state(request)
    engine = state.engine if state.engine is not None else state.require_engine()  # 503 while loading
    return {"id": engine.model_name, "object": "model", "created": state.started_at, "owned_by": "specserve",
            "max_model_len": engine.max_model_len}


@v1.get("/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [_model_card(request)]})


@v1.get("/models/{model_id:path}")  # :path: hub-style names ("org/name") hold a slash
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    """`client.models.retrieve(id)`: the model card, or 404 model_not_found in OpenAI's shape."""
    card = _model_card(request)
    if model_id != card["id"]:
        raise ModelNotFoundError(f"The model {model_id!r} does not exist; this server serves {card['id']!r}",
                                 param="model")
    return JSONResponse(card)


@v1.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    req = await read_json(request, ChatCompletionRequest)
    return await _state(request).chat.create(req, request)


@v1.post("/completions")
async def completions(request: Request) -> Response:
    req = await read_json(request, CompletionRequest)
    return await _state(request).completions.create(req, request)
