"""Start one engine-core process (engine.core_process) with its ZeroMQ socket pair and wait until it is ready.

`engine.process_engine.ProcessEngine` calls `spawn_core` at start and after each death of the core; an `Incarnation`
is one such process with its sockets. Loading failures and deaths while loading are `EngineDiedError`, naming why.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import signal
from collections.abc import Callable

import zmq

from engine.ipc import Codec, LoadFailed, Ready

log = logging.getLogger("specserve.engine")

POLL_MS = 250


class EngineDiedError(RuntimeError):
    """The core process ended before it was ready (its load failed or it was killed)."""


@dataclasses.dataclass
class Incarnation:
    """One core process and its socket pair."""

    proc: mp.process.BaseProcess
    inbox: zmq.Socket  # PUSH, API -> core
    outbox: zmq.Socket  # PULL, core -> API
    poller: zmq.Poller
    ready: Ready | None = None
    fatal: str | None = None

    def close(self) -> None:
        self.inbox.close(linger=0)
        self.outbox.close(linger=0)


def spawn_core(zctx: zmq.Context, mp_ctx, codec: Codec, settings, run_dir, generation: int, *,
               stopping: Callable[[], bool]) -> Incarnation:
    """Start core process number `generation` on sockets under `run_dir`; return it once it sent Ready."""
    in_addr = f"ipc://{run_dir}/in-{generation}"
    out_addr = f"ipc://{run_dir}/out-{generation}"
    inbox = zctx.socket(zmq.PUSH)
    inbox.setsockopt(zmq.LINGER, 0)  # a dead core's unsent queue must not block exit
    inbox.setsockopt(zmq.SNDHWM, 0)  # never drop or block on adds: admission already bounds them
    inbox.bind(in_addr)
    outbox = zctx.socket(zmq.PULL)
    outbox.setsockopt(zmq.LINGER, 0)
    outbox.setsockopt(zmq.RCVHWM, 0)
    outbox.bind(out_addr)
    proc = mp_ctx.Process(target=_core_main, name=f"specserve-core-{generation}", daemon=True,
                          args=(settings, in_addr, out_addr, settings.server.log_level))
    proc.start()
    poller = zmq.Poller()
    poller.register(outbox, zmq.POLLIN)
    poller.register(proc.sentinel, zmq.POLLIN)
    inc = Incarnation(proc, inbox, outbox, poller)
    while not stopping():
        events = dict(poller.poll(POLL_MS))
        if outbox in events:
            msg = codec.decode_from_core(outbox.recv())
            if isinstance(msg, Ready):
                inc.ready = msg
                log.info("engine core ready (pid %d)", msg.pid)
                return inc
            if isinstance(msg, LoadFailed):
                stop_process(proc, grace=5.0)
                inc.close()
                raise EngineDiedError(msg.error)
        elif proc.sentinel in events or not proc.is_alive():
            proc.join(1.0)
            inc.close()
            raise EngineDiedError(f"the engine process exited while loading ({exit_reason(proc.exitcode)})")
    stop_process(proc, grace=1.0)
    inc.close()
    raise EngineDiedError("the server shut down while the engine was loading")


def exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def stop_process(proc, grace: float) -> None:
    proc.join(grace)
    if proc.is_alive():
        proc.terminate()
        proc.join(2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(2.0)


def _core_main(settings, in_addr: str, out_addr: str, log_level: str) -> None:
    from engine.core_process import run_core

    run_core(settings, in_addr, out_addr, log_level)
