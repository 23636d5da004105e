"""`specserve serve`: build settings from flags, run uvicorn programmatically, drain on SIGTERM, exit 0.

SIGTERM/SIGINT (first): the server keeps listening but answers new requests with 503, lets in-flight requests finish
within `drain_timeout` (then aborts the rest), and exits 0. A second signal exits at once. A model that fails to load
ends the process with status 1. Invalid settings, model paths that are not checkpoints and a Neuron backend without
its library are found before the port is bound (server/preflight.py): one line naming the setting, exit 2. Once bound, the server logs
`specserve listening on http://HOST:PORT` (the real port, also with `--port 0`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from config.loader import ConfigError, load_settings
from server.cli import add_settings_flags
from server.preflight import PreflightError, preflight

if TYPE_CHECKING:  # server.state pulls in FastAPI, imported only once logging is set up (run)
    from server.state import ServerState

log = logging.getLogger("specserve.server")

_SETTINGS_DESTS: set[str] = set()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None, help="YAML settings file (flat or by section)")
    _SETTINGS_DESTS.update(add_settings_flags(parser))


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains the engine before uvicorn stops listening."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                log.info("specserve listening on http://%s:%d", host if ":" not in host else f"[{host}]", port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # NOTE: unlike uvicorn's, this does not record the signal, so it is not re-raised at exit: a drained
        # shutdown exits 0.
        if self._draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self._draining
            return
        self._draining = True
        log.info("received %s", signal.Signals(sig).name)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            await self.state.drain()
        finally:
            self.should_exit = True

    def fail(self, message: str) -> None:
        log.error("exiting: %s", message)
        self.exit_code = 1
        self.should_exit = True


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    cli = {k: v for k, v in vars(args).items() if k in _SETTINGS_DESTS}
    try:
        settings = load_settings(cli, args.config)
        preflight(settings)
    except (ConfigError, PreflightError) as e:
        print(f"specserve serve: error: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.server.log_level)
    from server.app import create_app  # after logging is set up; pulls in FastAPI

    app = create_app(settings)
    try:
        sock = _bind(settings.server.host, settings.server.port)
    except OSError as e:
        print(f"specserve serve: error: cannot bind {settings.server.host}:{settings.server.port}: {e}",
              file=sys.stderr)
        return 2
    config = uvicorn.Config(app, log_config=None, log_level=settings.server.log_level, access_log=False,
                            lifespan="on",
                            # NOTE: at 5 s (equal to httpx's pool expiry) the server closed connections clients were
                            # reusing that instant: "Server disconnected without sending a response" under load.
                            timeout_keep_alive=settings.server.keep_alive_timeout)
    server = DrainingServer(config, app.state.specserve)
    app.state.specserve.on_fatal = server.fail
    server.run(sockets=[sock])
    return server.exit_code
