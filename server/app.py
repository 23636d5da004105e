"""The FastAPI app factory. `create_app(settings)` returns an app whose lifespan loads the engine in a thread (so
uvicorn answers `/health` with 503 while the model loads), starts the engine loop, and shuts the engine down at exit.
Draining on SIGTERM is driven by the CLI's server (server/cli.py) through `app.state.specserve.drain()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from config.settings import Settings
from server.errors import install_handlers
from server.http_metrics import HttpResponseCounter
from server.metrics import ServerMetrics
from server.routes import router, v1
from server.serving_chat import ChatServing
from server.serving_completions import CompletionServing
from server.state import Phase, ServerState

log = logging.getLogger("specserve.server")


def create_app(settings: Settings, engine: Any = None,
               engine_factory: Callable[[Settings], Any] | None = None) -> FastAPI:
    """Build the app. `engine`: an already built engine (tests); otherwise `engine_factory(settings)` (default:
    `AsyncEngine.from_settings`) runs in a thread at startup. Either way the app starts the engine's loop at startup
    and shuts it down at exit."""
    state = ServerState(settings, engine=engine, engine_factory=engine_factory)
    state.chat = ChatServing(state)
    state.completions = CompletionServing(state)
    metrics = ServerMetrics(state)  # its own registry: several apps may live in one process
    state.listeners.append(metrics)

    async def load_and_attach() -> None:
        await state.load()
        if state.engine is not None and state.phase is Phase.READY:
            metrics.attach(state.engine)  # no await since load() returned: no request ran unobserved

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load = asyncio.create_task(load_and_attach())
        try:
            yield
        finally:
            if not load.done():
                log.info("shutting down while the model is still loading; waiting for it")
                with contextlib.suppress(Exception):
                    await load
            await asyncio.to_thread(state.shutdown)

    app = FastAPI(title="specserve", summary="OpenAI-compatible speculative-decoding server", lifespan=lifespan)
    app.state.specserve = state
    app.state.metrics = metrics
    install_handlers(app)
    app.add_middleware(HttpResponseCounter, counter=metrics.http_responses)
    app.include_router(router)
    app.include_router(v1)
    return app
