"""`specserve_http_responses_total{handler, status}`: every HTTP response, counted when its status line is sent.

Pure ASGI middleware rather than `@app.middleware("http")`, so a streamed (SSE) response passes through untouched.
`handler` is the matched route's template (`/v1/models/{model_id:path}`), never the raw path, so a scanner probing
random URLs adds one series (`other`), not one per URL.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

UNMATCHED = "other"


class HttpResponseCounter:
    def __init__(self, app: Any, counter: Counter):
        self.app = app
        self.counter = counter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = False

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent = True
                self._count(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send=counting_send)
        except Exception:
            if not sent:  # the outer error middleware turns it into a 500
                self._count(scope, 500)
            raise

    def _count(self, scope: dict[str, Any], status: int) -> None:
        route = scope.get("route")  # set by Starlette's router on the shared scope once a route matched
        handler = getattr(route, "path", None) or UNMATCHED
        self.counter.labels(handler, str(status)).inc()
