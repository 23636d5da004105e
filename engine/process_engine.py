"""API-side client of the engine-core process, with the same public interface as `engine.async_engine.AsyncEngine`.

The API process keeps HTTP, tokenization and the admission checks (so bad input is a 4xx before any response starts);
the core process (engine.core_process) owns the LLMEngine. Per event-loop tick at most one `Inbox` goes out; per engine
step one `StepBatch` comes back, is decoded on a receiver thread, and reaches the event loop with ONE
`call_soon_threadsafe` for all its requests (the in-process bridge wakes the loop once per request per step).

If the core dies (exception, OOM killer, kill -9) the receiver sees its process sentinel at once: every in-flight
choice ends with finish_reason "error" (HTTP 500 / an SSE error event), `stats()` reports unhealthy with the reason
(GET /health: 503), and, when `restart` is on, a new core is spawned and serving resumes in the same API process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import zmq

from engine import errors as engine_errors
from engine.admission import request_limits
from engine.async_engine import Drainable, EngineStats, RequestStream
from engine.core_mirror import ApiAdmission, CounterMirror
from engine.core_spawn import POLL_MS, EngineDiedError, Incarnation, exit_reason, spawn_core, stop_process
from engine.cpu_affinity import bind_process
from engine.errors import EngineStoppedError, QueueFullError
from engine.ipc import (
    AddRequest,
    Codec,
    Fatal,
    Inbox,
    Shutdown,
    StepBatch,
    pack_params,
)
from engine.outputs import RequestOutput
from engine.sampling.params import SamplingParams

log = logging.getLogger("specserve.engine")

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # between failed restarts


class ProcessRequestStream(RequestStream):
    """A RequestStream that can also end with a typed error (a check only the core could make, e.g. a Neuron
    bucket): the error is raised from `__anext__`, so the endpoint maps it to the same status as in-process."""

    def _fail(self, exc: BaseException) -> None:
        self._queue.put_nowait(exc)  # type: ignore[arg-type]

    async def __anext__(self) -> RequestOutput:
        if self._remaining == 0 and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._remaining = 0
            raise item
        if item.finished:
            self._remaining -= 1
        return item


class ProcessEngine(Drainable):
    """Runs the LLMEngine in an engine-core process; see the module docstring."""

    def __init__(self, settings, *, restart: bool = True):
        self.settings = settings
        self.restart = restart
        self._zctx = zmq.Context(io_threads=1)
        self._dir = Path(tempfile.mkdtemp(prefix="specserve-core-"))
        self._codec = Codec()
        self._mp = mp.get_context("spawn")  # a fresh interpreter: no torch/OpenMP threads forked
        self._inc: Incarnation | None = None
        self._generation = 0
        self._lock = threading.Lock()  # streams, in-flight count, pending adds/aborts
        self._send_lock = threading.Lock()  # the inbox socket (loop thread sends, restarts replace it)
        self._streams: dict[str, ProcessRequestStream] = {}
        self._in_flight = 0
        self._adds: list[AddRequest] = []
        self._aborts: list[str] = []
        self._flush_scheduled = False
        self._listeners: list[Callable[[list[RequestOutput]], None]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining = False
        self._down: str | None = None  # why the core is not serving (died, restarting, restart off)
        self.restarts = 0
        self._mirror = CounterMirror()
        self.counters = self._mirror.counters  # totals since start, over every core incarnation
        self._gauges = (0, 0, 0)  # running, waiting, free slots, as of the core's last step
        self.engine = self._mirror.view
        self.tokenizer = None
        self.model_name = ""
        self.max_model_len = 0
        self.vocab_size = 0
        self._admission: ApiAdmission | None = None

    @classmethod
    def from_settings(cls, settings) -> ProcessEngine:
        """Spawn the core, wait until it has built and warmed up its engine, load the tokenizer here. Blocking."""
        from engine.models.tokenizer import load_tokenizer

        self = cls(settings, restart=settings.engine.engine_restart)
        try:
            inc = self._spawn()
        except BaseException:
            self._close_context()
            raise
        ready = inc.ready
        self.tokenizer = load_tokenizer(ready.tokenizer_path)
        self.model_name, self.max_model_len, self.vocab_size = ready.model_name, ready.max_model_len, ready.vocab_size
        self._admission = ApiAdmission(ready, self.tokenizer, request_limits(settings))
        self._gauges = (0, 0, ready.max_num_seqs)  # a fresh core: every slot free until its first step says more
        self._inc = inc
        return self

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._receive_loop, name="specserve-engine-rx", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        self._stopping = True
        inc = self._inc
        if inc is not None:
            with self._send_lock:
                try:
                    inc.inbox.send(self._codec.encode(Shutdown()), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if inc is not None:
            stop_process(inc.proc, grace=10.0)
            self._fail_all(inc, "the server shut down")
            inc.close()
            self._inc = None
        self._close_context()

    @property
    def pid(self) -> int | None:
        """The engine-core process id (tests kill it)."""
        inc = self._inc
        return inc.proc.pid if inc is not None else None

    # -- requests (event loop) -------------------------------------------------------------------------------------

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> RequestStream:
        if self._draining or self._stopping:
            raise EngineStoppedError("the server is shutting down and accepts no new requests")
        if self._down is not None:
            raise EngineStoppedError(f"the engine is not serving: {self._down}")
        self._admission.check(prompt_ids, params)
        rid = request_id or uuid.uuid4().hex
        with self._lock:
            if rid in self._streams:
                raise ValueError(f"duplicate request id {rid}")
            lim = self._admission.limits
            if self._in_flight + params.n > lim.max_num_seqs + lim.max_queue:
                raise QueueFullError(
                    f"server is at capacity ({lim.max_num_seqs} running, {lim.max_queue} waiting); retry later")
            stream = ProcessRequestStream(rid, params.n, self)
            self._streams[rid] = stream
            self._in_flight += params.n
            self._adds.append(AddRequest(rid, list(prompt_ids), pack_params(params), time.monotonic()))
        self._schedule_flush()
        return stream

    def abort(self, request_id: str) -> None:
        with self._lock:
            if request_id not in self._streams:
                return
            self._aborts.append(request_id)
        self._schedule_flush()

    def add_output_listener(self, fn: Callable[[list[RequestOutput]], None]) -> None:
        """Call `fn(outputs)` on the receiver thread with every batch of outputs (metrics, request logs)."""
        self._listeners.append(fn)

    def stats(self) -> EngineStats:
        running, waiting, free = self._gauges
        runner_error = self._mirror.last.last_runner_error
        alive = self._down is None and self._inc is not None and self._thread is not None
        return EngineStats(num_running=running, num_waiting=waiting, num_free_slots=free,
                           num_slots=self._admission.limits.max_num_seqs if self._admission else 0,
                           healthy=alive and runner_error is None, error=self._down or runner_error,
                           draining=self._draining)

    def _schedule_flush(self) -> None:
        """Send this tick's adds/aborts as one message, after the current callback returns."""
        with self._lock:
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self._flush)
        except RuntimeError:  # not on an event loop (a test driving the engine from a thread): send now
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            adds, self._adds = self._adds, []
            aborts, self._aborts = self._aborts, []
        if not adds and not aborts:
            return
        data = self._codec.encode(Inbox(adds=adds, aborts=aborts))
        with self._send_lock:
            inc = self._inc
            if inc is None:
                return  # the core is gone; its death already failed these streams
            try:
                inc.inbox.send(data, zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as e:  # queue full: the core stopped reading (it is dying); the receiver fails them
                log.error("could not send to the engine core: %s", e)

    # -- the receiver (its own thread) -----------------------------------------------------------------------------

    def _spawn(self) -> Incarnation:
        """Start a core process and wait for its Ready (or its failure). Blocking: loading takes seconds."""
        self._generation += 1
        inc = spawn_core(self._zctx, self._mp, self._codec, self.settings, self._dir, self._generation,
                         stopping=lambda: self._stopping)
        if inc.ready.api_cpus is not None:  # keep the API's wake-ups off the engine's cores
            bind_process(frozenset(inc.ready.api_cpus))
        return inc

    def _receive_loop(self) -> None:
        while not self._stopping:
            inc = self._inc
            if inc is None:
                return
            try:
                events = dict(inc.poller.poll(POLL_MS))
                if inc.outbox in events:
                    self._read_all(inc)
                if inc.proc.sentinel in events or not inc.proc.is_alive():
                    if self._stopping:
                        return
                    self._read_all(inc)  # outputs and a Fatal sent just before dying
                    self._on_death(inc)
                    if not self.restart:
                        return
                    self._respawn()
            except Exception:  # a bug here must not leave requests hanging: treat it as a dead core
                log.exception("engine receiver failed")
                if self._inc is not None and not self._stopping:
                    stop_process(self._inc.proc, grace=0.0)

    def _read_all(self, inc: Incarnation) -> None:
        while True:
            try:
                data = inc.outbox.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            msg = self._codec.decode_from_core(data.buffer)
            if isinstance(msg, StepBatch):
                self._on_step(msg)
            elif isinstance(msg, Fatal):
                inc.fatal = msg.error

    def _on_step(self, batch: StepBatch) -> None:
        self._mirror.update(batch.counters)
        self._gauges = (batch.num_running, batch.num_waiting, batch.num_free_slots)
        for rec in batch.records:
            for observe in self.counters.step_observers:
                observe(rec)
        outputs = batch.outputs
        if outputs:
            self._dispatch(outputs)
        for rej in batch.rejected:
            exc_type = getattr(engine_errors, rej.error_type, engine_errors.RequestFailedError)
            with self._lock:
                stream = self._streams.pop(rej.request_id, None)
                if stream is not None:
                    self._in_flight -= stream.open_choices
            if stream is not None:
                stream._loop.call_soon_threadsafe(stream._fail, exc_type(rej.message, field=rej.field))

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for fn in self._listeners:
            try:
                fn(outputs)
            except Exception:
                log.exception("output listener failed")
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[ProcessRequestStream, list[RequestOutput]]]] = {}
        by_request: dict[str, list[RequestOutput]] = {}
        for out in outputs:
            by_request.setdefault(out.request_id, []).append(out)
        with self._lock:
            for rid, outs in by_request.items():
                stream = self._streams.get(rid)
                if stream is None:
                    continue
                done = sum(1 for o in outs if o.finished)
                self._in_flight -= done
                stream.open_choices -= done
                if stream.open_choices <= 0:
                    self._streams.pop(rid, None)
                deliveries.setdefault(stream._loop, []).append((stream, outs))
        for loop, items in deliveries.items():  # one wake-up of each loop per step, not one per request
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that loop is closed (a test ended); nobody is reading
                pass

    def _on_death(self, inc: Incarnation) -> None:
        inc.proc.join(1.0)
        reason = inc.fatal or exit_reason(inc.proc.exitcode)
        self._down = f"the engine process died ({reason})" + ("; restarting it" if self.restart else "")
        log.error("%s", self._down)
        with self._send_lock:
            self._inc = None
        self._gauges = (0, 0, self._admission.limits.max_num_seqs if self._admission else 0)
        self._fail_all(inc, self._down)
        inc.close()
        self._mirror.retire()

    def _fail_all(self, inc: Incarnation, message: str) -> None:
        """End every in-flight choice with finish_reason "error" (HTTP 500 / an SSE error event)."""
        with self._lock:
            streams, self._streams = self._streams, {}
            self._adds, self._aborts = [], []
            self._in_flight = 0
        outs = [RequestOutput(request_id=s.request_id, index=i, token_ids=[], text="", finished=True,
                              finish_reason="error", error=message)
                for s in streams.values() for i in _open_indices(s)]
        if not outs:
            return
        for fn in self._listeners:
            try:
                fn(outs)
            except Exception:
                log.exception("output listener failed")
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for s in streams.values():
            by_loop.setdefault(s._loop, []).append(
                (s, [o for o in outs if o.request_id == s.request_id]))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                pass

    def _respawn(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                inc = self._spawn()
            except EngineDiedError as e:
                wait = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                attempt += 1
                self._down = f"the engine restart failed ({e}); retrying in {wait:g}s"
                log.error("%s", self._down)
                time.sleep(wait)
                continue
            if inc.ready.model_name != self.model_name or inc.ready.vocab_size != self.vocab_size:
                log.warning("restarted engine serves %s (vocab %d); the API side keeps %s", inc.ready.model_name,
                            inc.ready.vocab_size, self.model_name)
            self._gauges = (0, 0, inc.ready.max_num_seqs)
            with self._send_lock:
                self._inc = inc
            self.restarts += 1
            self._down = None
            log.info("engine core restarted (%d restart(s) so far)", self.restarts)
            return

    def _close_context(self) -> None:
        try:
            self._zctx.term()
        except zmq.ZMQError:
            pass
        shutil.rmtree(self._dir, ignore_errors=True)


def _open_indices(stream: ProcessRequestStream) -> list[int]:
    """One error output per choice the engine has not finished (the first one already ends the HTTP request)."""
    return list(range(max(stream.open_choices, 1)))


def _deliver(items: list[tuple[ProcessRequestStream, list[RequestOutput]]]) -> None:
    for stream, outs in items:
        stream._put(outs)
