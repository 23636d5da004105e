"""What both endpoints share: driving the engine streams of one HTTP request, SSE framing, the template of a request.

`EngineRun` merges the engine streams of one HTTP request (one per prompt), enforces the wall-clock deadline and turns a
client disconnect into an immediate abort, so the engine slot returns to the pool at the next step boundary whether
the response is streamed or not. `Serving` is the template every endpoint follows: validate + submit (errors here get a
proper HTTP status), then either collect a JSON body or stream SSE chunks (errors there become an SSE error event).
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.errors import RequestFailedError
from engine.outputs import RequestOutput, SpecStats, merge_outputs
from server.errors import (
    ClientDisconnectedError,
    RequestTimeoutError,
    ServiceUnavailableError,
    describe,
    sse_error_event,
)
from server.finish_reason import FinishReason
from server.request_log import RequestRecord
from server.state import ServerState, name_engine_field

log = logging.getLogger("specserve.server")

SSE_DONE = "data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
LOGPROB_FLOOR = -9999.0  # JSON has no -inf; OpenAI clients expect a number


# json.dumps(ensure_ascii=False) leaves NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR raw; line readers that split like
# str.splitlines (httpx's iter_lines, hence many SSE clients) then cut a `data:` line in two and the JSON breaks.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object, on one line for every line splitter."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':')).translate(_LINE_BREAKS)}\n\n"


def finite_logprob(x: float) -> float:
    return x if x > LOGPROB_FLOOR else LOGPROB_FLOOR


def check_output(out: RequestOutput) -> None:
    """Turn a choice that ended in error/abort inside the engine into the exception the client should see."""
    reason = FinishReason.of(out)
    if reason is FinishReason.ERROR:
        raise RequestFailedError(out.error or "generation failed inside the engine")
    if reason is FinishReason.ABORT:
        raise ServiceUnavailableError("the request was aborted by the server (shutting down or overloaded)",
                                      code="request_aborted")


def usage_dict(prompt_tokens: int, completion_tokens: int, spec: SpecStats) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "speculation": spec.as_dict(),
    }


@dataclass
class UsageTally:
    """Usage summed over prompts (prompt tokens, once each) and choices (completion tokens, speculation)."""

    prompt_tokens: dict[int, int] = field(default_factory=dict)  # stream index -> prompt tokens
    completion_tokens: int = 0
    spec: SpecStats = field(default_factory=SpecStats)

    def add(self, stream_idx: int, out: RequestOutput) -> None:
        self.prompt_tokens[stream_idx] = out.num_prompt_tokens
        if out.finished:
            self.completion_tokens += out.num_output_tokens
            self.spec.draft_tokens += out.spec.draft_tokens
            self.spec.accepted_tokens += out.spec.accepted_tokens
            self.spec.target_passes += out.spec.target_passes
            self.spec.forced_tokens += out.spec.forced_tokens

    def as_dict(self) -> dict[str, Any]:
        return usage_dict(sum(self.prompt_tokens.values()), self.completion_tokens, self.spec)


@dataclass(frozen=True, slots=True)
class _Output:
    """Stream `index` produced an output."""

    index: int
    output: RequestOutput


@dataclass(frozen=True, slots=True)
class _StreamEnded:
    """Stream `index` has no more outputs."""

    index: int


@dataclass(frozen=True, slots=True)
class _StreamFailed:
    """Stream `index` raised (an engine error the consumer maps to a response)."""

    index: int
    error: Exception


@dataclass(frozen=True, slots=True)
class _ClientLeft:
    """The HTTP client disconnected."""


@dataclass(frozen=True, slots=True)
class _DeadlinePassed:
    """The request's wall-clock deadline (server.request_timeout) passed."""


# What the pump and watcher tasks (and the deadline timer) of one EngineRun hand its consumer, in arrival order.
_RunEvent = _Output | _StreamEnded | _StreamFailed | _ClientLeft | _DeadlinePassed


class EngineRun:
    """The engine streams of one HTTP request, merged, under a deadline, aborted when the client leaves.

    Deltas of one choice that queued up while the consumer was busy (writing the previous SSE chunk) come out as one
    merged delta: when the API process is slower per chunk than the engine per step, it then sends fewer, larger
    chunks instead of falling further behind (the client parses fewer too), and no token waits behind its own
    predecessors' writes. (vLLM's v1 `RequestOutputCollector`, vllm/v1/engine/output_processor.py, merges
    delta outputs the same way when its producer gets ahead.)"""

    def __init__(self, streams: list[Any], timeout: float, request: Request | None = None):
        self.streams = streams
        self.timeout = timeout
        self.request = request
        self._done = [False] * len(streams)
        self._tasks: list[asyncio.Task] = []
        self._closed = False

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Yield (stream index, output) until every stream ended; raise on deadline, disconnect or engine error."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_RunEvent] = asyncio.Queue()
        # One timer for the whole request, not `wait_for` per event: that wraps every token's `queue.get()` in a
        # new task plus a timer handle, on the event loop every stream shares.
        timer = loop.call_later(self.timeout, queue.put_nowait, _DeadlinePassed())

        async def pump(i: int, stream: Any) -> None:
            try:
                async for out in stream:
                    queue.put_nowait(_Output(i, out))
                queue.put_nowait(_StreamEnded(i))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # handed to the consumer, which maps it to a response
                queue.put_nowait(_StreamFailed(i, e))

        async def watch_disconnect(request: Request) -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    queue.put_nowait(_ClientLeft())
                    return

        self._tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        if self.request is not None:
            self._tasks.append(asyncio.create_task(watch_disconnect(self.request)))
        remaining = len(self.streams)
        try:
            while remaining:
                events = [await queue.get()]
                while not queue.empty():  # what else arrived meanwhile (the loop was busy writing a chunk)
                    events.append(queue.get_nowait())
                for event in _coalesce(events):
                    match event:
                        case _Output(i, out):
                            if FinishReason.of(out) in (FinishReason.ERROR, FinishReason.ABORT):
                                self.close()
                            yield i, out
                        case _StreamEnded(i):
                            self._done[i] = True
                            remaining -= 1
                        case _StreamFailed(i, error):
                            self._done[i] = True
                            self.close()
                            raise error
                        case _ClientLeft():
                            self.close()
                            raise ClientDisconnectedError()
                        case _DeadlinePassed():
                            self.close()
                            raise RequestTimeoutError(
                                f"request exceeded the server's {self.timeout:g} s deadline (server.request_timeout)")
        finally:
            timer.cancel()

    def close(self) -> None:
        """Abort every unfinished engine stream and stop the helper tasks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for i, stream in enumerate(self.streams):
            if not self._done[i]:
                try:
                    stream.abort()
                except Exception:  # the engine may already be gone; the slot is freed with it
                    log.exception("abort of %s failed", getattr(stream, "request_id", "?"))
        for t in self._tasks:
            t.cancel()


@dataclass
class RequestContext:
    """What one HTTP request carries from `submit` to `collect`/`chunks`: its id and creation time, set by the
    template, and what `submit` decided (each endpoint's subclass adds its own fields)."""

    id: str
    created: int  # unix seconds, the response's `created`
    logprobs: bool = False  # the client asked for logprobs


Req = TypeVar("Req")  # the endpoint's pydantic request (server.protocol)
Ctx = TypeVar("Ctx", bound=RequestContext)


class Serving(abc.ABC, Generic[Req, Ctx]):
    """Template for one endpoint: subclasses submit the request and turn outputs into a body or SSE chunks."""

    endpoint = "?"
    id_prefix = "req"
    context_type: type[Ctx]  # the endpoint's RequestContext subclass, built per request by `create`

    def __init__(self, state: ServerState):
        self.state = state

    # --- subclass hooks ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def submit(self, req: Req, ctx: Ctx, rec: RequestRecord) -> list[Any]:
        """Validate `req` and add it to the engine; fill in `ctx`; return the engine streams. Raise for any
        4xx/5xx."""
        ...

    @abc.abstractmethod
    async def collect(self, run: EngineRun, req: Req, ctx: Ctx, rec: RequestRecord) -> dict[str, Any]:
        ...

    @abc.abstractmethod
    def chunks(self, run: EngineRun, req: Req, ctx: Ctx, rec: RequestRecord) -> AsyncIterator[str]:
        ...

    # --- the template --------------------------------------------------------------------------------------------

    async def create(self, req: Req, request: Request) -> Response:
        request.state.specserve_logged = True  # this request's line is written here, not by the error handlers
        request_id = f"{self.id_prefix}-{_new_id()}"
        rec = RequestRecord(request_id, self.endpoint, stream=bool(req.stream), n=req.n,
                            listeners=self.state.listeners)
        ctx = self.context_type(id=request_id, created=int(time.time()))
        try:
            streams = await self.submit(req, ctx, rec)
        except Exception as e:
            self._fail(rec, e)
            rec.emit()
            raise
        run = EngineRun(streams, self.state.settings.server.request_timeout, request)
        headers = {"X-Request-Id": request_id}
        if req.stream:
            return _EngineStreamingResponse(self._sse(run, req, ctx, rec), run, rec, media_type="text/event-stream",
                                            headers={**SSE_HEADERS, **headers})
        try:
            body = await self.collect(run, req, ctx, rec)
        except ClientDisconnectedError as e:
            self._fail(rec, e)
            return Response(status_code=499)  # nobody reads it; uvicorn drops it
        except BaseException as e:
            self._fail(rec, e)
            raise
        finally:
            run.close()
            rec.emit()
        return JSONResponse(body, headers=headers)

    async def _sse(self, run: EngineRun, req: Req, ctx: Ctx, rec: RequestRecord) -> AsyncIterator[str]:
        try:
            async for chunk in self.chunks(run, req, ctx, rec):
                yield chunk
        except ClientDisconnectedError as e:
            self._fail(rec, e)
            return
        except Exception as e:
            self._fail(rec, e)
            if describe(e)[0] == 500:
                log.exception("request %s failed while streaming", rec.request_id)
            yield sse_error_event(e)
        except BaseException as e:  # cancelled: starlette saw the client disconnect
            self._fail(rec, ClientDisconnectedError())
            run.close()
            rec.emit()
            raise e
        finally:
            run.close()
            rec.emit()
        yield SSE_DONE

    def _fail(self, rec: RequestRecord, e: BaseException) -> None:
        """Every failure of a served request passes here (submit, collect, SSE) before its error body is built: an
        engine error gets this endpoint's name for its field first."""
        name_engine_field(e, self.endpoint)
        status, body, _ = describe(e)
        rec.fail(status, body["error"]["message"])


class _EngineStreamingResponse(StreamingResponse):
    """Closes the engine run however the response ends, also when the body generator never started (the client
    left before the first byte), so no engine request outlives its connection."""

    def __init__(self, content: AsyncIterator[str], run: EngineRun, rec: RequestRecord, **kw: Any):
        super().__init__(content, **kw)
        self._run = run
        self._rec = rec

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._run.close()
            if not self._rec.emitted:
                self._rec.fail(499, "client disconnected")
                self._rec.emit()


def _coalesce(events: list[_RunEvent]) -> list[_RunEvent]:
    """`events` with each choice's consecutive outputs merged into one (`merge_outputs`), in order otherwise; an
    output never merges across another kind of event (an end, a failure, a disconnect) or past its choice's finish."""
    merged: list[_RunEvent] = []
    latest: dict[tuple[int, int], int] = {}  # (stream, choice) -> position in `merged` of its open output
    for event in events:
        if not isinstance(event, _Output):
            latest.clear()
            merged.append(event)
            continue
        key = (event.index, event.output.index)
        j = latest.get(key)
        if j is not None:
            merged[j] = _Output(event.index, merge_outputs(merged[j].output, event.output))  # type: ignore[union-attr]
        else:
            latest[key] = len(merged)
            merged.append(event)
        if event.output.finished:
            latest.pop(key, None)
    return merged


def _new_id() -> str:
    import uuid

    return uuid.uuid4().hex
