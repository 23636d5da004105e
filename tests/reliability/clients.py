"""Async HTTP clients for the reliability tests: a streaming request that classifies its outcome, /health and
/metrics readers, and the OpenAI error-shape check. Loopback only; every call has a timeout."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

import httpx

OK, REJECTED, LOST = "completed", "rejected", "lost"


@dataclass
class Outcome:
    kind: str  # completed / rejected / lost
    status: int = 0
    detail: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0


def is_openai_error(body: object) -> bool:
    """{"error": {"message": str, "type": str, "param": str|None, "code": str|int|None}}"""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return False
    err = body["error"]
    return (isinstance(err.get("message"), str) and bool(err["message"]) and isinstance(err.get("type"), str)
            and "param" in err and "code" in err)


async def stream_chat(client: httpx.AsyncClient, body: dict, timeout: float = 120.0) -> Outcome:
    """POST a streaming request and read it to the end. completed: 200, every choice got a finish_reason, no error
    event, `data: [DONE]` last. rejected: 429 in OpenAI's error shape with Retry-After. Anything else is lost."""
    t0 = time.monotonic()
    n = body.get("n", 1)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"

    async def call() -> Outcome | list[str]:
        async with client.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                raw = await r.aread()
                try:
                    err = json.loads(raw)
                except ValueError:
                    return Outcome(LOST, r.status_code, f"non-JSON error body {raw[:200]!r}")
                if r.status_code == 429 and is_openai_error(err) and r.headers.get("retry-after") \
                        and err["error"]["type"] == "rate_limit_error":
                    return Outcome(REJECTED, 429, seconds=time.monotonic() - t0)
                return Outcome(LOST, r.status_code, f"unexpected error {err}")
            return [line[len("data: "):] async for line in r.aiter_lines() if line.startswith("data: ")]

    try:
        got = await asyncio.wait_for(call(), timeout)  # 3.10 floor: no asyncio.timeout
    except (httpx.HTTPError, asyncio.TimeoutError) as e:
        return Outcome(LOST, 0, f"{type(e).__name__}: {e!r}", seconds=time.monotonic() - t0)
    if isinstance(got, Outcome):
        return got
    events = got
    if not events or events[-1] != "[DONE]":
        return Outcome(LOST, 200, f"stream did not end with [DONE]: {events[-2:]}")
    finishes: dict[int, str] = {}
    for ev in events[:-1]:
        try:
            chunk = json.loads(ev)
        except ValueError:
            return Outcome(LOST, 200, f"event is not JSON: {ev[:200]!r}")
        if "error" in chunk:
            return Outcome(LOST, 200, f"error event {chunk['error']}")
        for c in chunk.get("choices", []):
            if c.get("finish_reason"):
                finishes[c["index"]] = c["finish_reason"]
    if len(finishes) != n:
        return Outcome(LOST, 200, f"{len(finishes)} of {n} choices finished")
    return Outcome(OK, 200, finish_reasons=list(finishes.values()), seconds=time.monotonic() - t0)


async def health(client: httpx.AsyncClient) -> dict:
    r = await client.get("/health", timeout=10)
    return r.json()


def idle(body: dict) -> bool:
    return body.get("running") == 0 and body.get("waiting") == 0 and body.get("free_slots") == body.get("num_slots")


async def wait_idle(client: httpx.AsyncClient, timeout: float = 30.0) -> dict:
    """The /health body once nothing runs or waits and every slot is free; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        body = await health(client)
        if idle(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"server not idle after {timeout}s: {body}")


_SAMPLE = re.compile(r"^(specserve_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+|NaN|[+-]Inf)$")


async def metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """Every specserve_* sample, labels dropped and summed (enough for totals and gauges)."""
    r = await client.get("/metrics", timeout=10)
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out
