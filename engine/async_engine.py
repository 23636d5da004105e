"""The async bridge: the engine loop runs in its own thread; the server awaits per-request output streams.

Callers (on the event loop) validate and enqueue synchronously — so queue-full and bad input surface as exceptions
before any response is started — and then iterate a `RequestStream`. That check (`LLMEngine.check_request`) and the
capacity booked here are the only ones: the engine thread enqueues without checking again. The loop thread owns the `LLMEngine`; the only
state shared with callers is the pending-adds/aborts inbox under one lock, and outputs are handed back with
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from engine.engine import LLMEngine
from engine.errors import EngineStoppedError, QueueFullError
from engine.outputs import RequestOutput
from engine.sampling.params import SamplingParams

log = logging.getLogger("specserve.engine")


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_free_slots: int
    num_slots: int
    healthy: bool
    error: str | None
    draining: bool


class RequestStream:
    """Async iterator over one request's `RequestOutput` deltas, all choices interleaved; ends when all finished."""

    def __init__(self, request_id: str, n: int, engine: AsyncEngine):
        self.request_id = request_id
        self._remaining = n  # choices the consumer has not seen finish (event-loop side)
        self.open_choices = n  # choices the engine has not finished (engine-thread side, under the engine's lock)
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()

    def _put(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            self._queue.put_nowait(out)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._remaining == 0 and self._queue.empty():
            raise StopAsyncIteration
        out = await self._queue.get()
        if out.finished:
            self._remaining -= 1
        return out

    @property
    def finished(self) -> bool:
        return self._remaining == 0

    def abort(self) -> None:
        if self._remaining:
            self._engine.abort(self.request_id)


class Drainable:
    """`drain()` for an engine client that counts `_in_flight` requests, keeps `_streams` by id and has `abort`."""

    _draining: bool
    _in_flight: int
    _streams: dict

    abort: Callable[[str], None]  # each engine client's own

    async def drain(self, timeout: float) -> None:
        """Stop admitting; wait for in-flight requests up to `timeout` seconds, then abort what is left."""
        self._draining = True
        deadline = time.monotonic() + timeout
        while self._in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for rid in list(self._streams):
            self.abort(rid)
        while self._in_flight > 0 and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.02)


class AsyncEngine(Drainable):
    def __init__(self, engine: LLMEngine, *, model_name: str, tokenizer=None):
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = tokenizer if tokenizer is not None else engine.tokenizer
        self.max_model_len = engine.limits.max_model_len
        self.vocab_size = engine.vocab_size
        self._lock = threading.Lock()
        self._pending: list[tuple[str, list[int], SamplingParams, float]] = []
        self._aborts: list[str] = []
        self._streams: dict[str, RequestStream] = {}
        self._in_flight = 0  # sequences admitted and not yet finished (counts pending adds too)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._draining = False
        self._fatal: str | None = None
        self._listeners: list[Callable[[list[RequestOutput]], None]] = []

    @classmethod
    def from_settings(cls, settings) -> AsyncEngine:
        """Load tokenizer, runner(s) and proposer as the settings say; warm up. Blocking (seconds to minutes)."""
        from engine.builder import build_engine

        engine, name = build_engine(settings)
        return cls(engine, model_name=name)

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="specserve-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- requests --------------------------------------------------------------------------------------------------

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> RequestStream:
        if self._draining or self._stop.is_set():
            raise EngineStoppedError("the server is shutting down and accepts no new requests")
        if self._fatal is not None:
            raise EngineStoppedError(f"the engine has failed: {self._fatal}")
        self.engine.check_request(prompt_ids, params)
        rid = request_id or uuid.uuid4().hex
        lim = self.engine.limits
        with self._lock:
            if rid in self._streams:
                raise ValueError(f"duplicate request id {rid}")
            if self._in_flight + params.n > lim.max_num_seqs + lim.max_queue:
                raise QueueFullError(
                    f"server is at capacity ({lim.max_num_seqs} running, {lim.max_queue} waiting); retry later"
                )
            stream = RequestStream(rid, params.n, self)
            self._streams[rid] = stream
            self._in_flight += params.n
            self._pending.append((rid, list(prompt_ids), params, time.monotonic()))
        self._wake.set()
        return stream

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)
        self._wake.set()

    def add_output_listener(self, fn: Callable[[list[RequestOutput]], None]) -> None:
        """Call `fn(outputs)` on the engine thread with every batch of outputs (metrics, request logs). It must be
        quick and must not raise; exceptions are logged and ignored."""
        self._listeners.append(fn)

    @property
    def counters(self):
        """Engine totals since start (`engine.stats.EngineCounters`); read-only for scrapers."""
        return self.engine.counters

    def stats(self) -> EngineStats:
        e = self.engine
        err = self._fatal or e.counters.last_runner_error
        return EngineStats(
            num_running=e.num_running, num_waiting=e.num_waiting + len(self._pending),
            num_free_slots=e.num_free_slots, num_slots=e.limits.max_num_seqs,
            healthy=self._fatal is None and e.counters.last_runner_error is None and self._thread is not None,
            error=err, draining=self._draining,
        )

    # -- the loop (engine thread) ----------------------------------------------------------------------------------

    def _ingest(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            aborts, self._aborts = self._aborts, []
        for rid, prompt_ids, params, arrival in pending:
            try:
                self.engine.enqueue(rid, prompt_ids, params, arrival_time=arrival)
            except Exception as e:  # validated already; anything here is a bug, fail this request alone
                log.exception("could not add request %s", rid)
                self._fail_request(rid, params.n, f"{type(e).__name__}: {e}")
        for rid in aborts:
            self.engine.abort(rid)

    def _fail_request(self, rid: str, n: int, message: str) -> None:
        outs = [RequestOutput(request_id=rid, index=i, token_ids=[], text="", finished=True,
                              finish_reason="error", error=message) for i in range(n)]
        self._dispatch(outs)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for fn in self._listeners:
            try:
                fn(outputs)
            except Exception:
                log.exception("output listener failed")
        by_request: dict[str, list[RequestOutput]] = {}
        for out in outputs:
            by_request.setdefault(out.request_id, []).append(out)
        with self._lock:
            for rid, outs in by_request.items():
                stream = self._streams.get(rid)
                done = sum(1 for o in outs if o.finished)
                self._in_flight -= done
                if stream is None:
                    continue
                stream.open_choices -= done
                if stream.open_choices <= 0:
                    self._streams.pop(rid, None)
                stream._loop.call_soon_threadsafe(stream._put, outs)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._ingest()
                if not self.engine.has_work():
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                self._dispatch(self.engine.step())
            except Exception as e:  # a bug in the loop itself: fail everything in flight, stay up, report unhealthy
                log.exception("engine loop failed")
                self._fatal = f"{type(e).__name__}: {e}"
                for rid in list(self._streams):
                    self.engine.abort(rid)
                try:
                    self._dispatch(self.engine.step())
                except Exception:
                    pass
