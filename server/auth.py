"""API-key check for /v1/* (health and metrics stay open): `Authorization: Bearer <server.api_key>`."""

from __future__ import annotations

import secrets

from fastapi import Request

from server.errors import AuthenticationError


def check_api_key(request: Request, api_key: str | None) -> None:
    """Raise 401 unless `api_key` is unset or the request carries it as a bearer token."""
    if api_key is None:
        return
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
        raise AuthenticationError("incorrect API key provided")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: the key comes from the app's settings."""
    check_api_key(request, request.app.state.specserve.settings.server.api_key)
