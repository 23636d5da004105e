"""Load generator: streamed OpenAI requests over httpx, at a fixed concurrency or with Poisson arrivals.

Each request streams (`stream: true`, `stream_options.include_usage`) and is timed on the client's clock
(`time.perf_counter`). Requests ask for exactly `max_tokens` tokens (`ignore_eos`, `min_tokens`: vLLM/specserve
extensions that other servers ignore), so output length is controlled where the server allows it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bench.stats import RequestResult


@dataclass
class RequestSpec:
    model: str
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    logprobs: bool = False  # ask for per-token logprobs to count tokens per chunk exactly
    control_length: bool = True  # send ignore_eos/min_tokens
    api_key: str | None = None
    extra: dict[str, Any] | None = None


def request_body(item: dict[str, Any], spec: RequestSpec, index: int) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) for one dataset record."""
    max_tokens = int(item.get("max_tokens", spec.max_tokens))
    body: dict[str, Any] = {"model": spec.model, "max_tokens": max_tokens, "temperature": spec.temperature,
                            "stream": True, "stream_options": {"include_usage": True}}
    if spec.seed is not None:
        body["seed"] = spec.seed + index
    if spec.control_length:
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    if "messages" in item:
        path = "/v1/chat/completions"
        body["messages"] = item["messages"]
        if spec.logprobs:
            body["logprobs"] = True
    else:
        path = "/v1/completions"
        body["prompt"] = item["prompt"]
        if spec.logprobs:
            body["logprobs"] = 0
    body.update(spec.extra or {})
    return path, body


def error_text(status: int, body: str) -> str:
    """`HTTP 404: <the server's message>` from an OpenAI-shaped error body (`{"error": {"message"}}`; FastAPI's
    `{"detail"}` too), else the first 200 characters of the body."""
    message = None
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            err = data.get("error", data.get("detail"))
            message = err.get("message") if isinstance(err, dict) else err
    except ValueError:
        pass
    text = str(message) if message else body.strip()
    return f"HTTP {status}: {text[:200]}"


def _chunk_tokens(choice: dict[str, Any]) -> int | None:
    lp = choice.get("logprobs")
    if not lp:
        return None
    if isinstance(lp.get("tokens"), list):  # completions shape
        return len(lp["tokens"])
    if isinstance(lp.get("content"), list):  # chat shape
        return len(lp["content"])
    return None


async def send_one(client: httpx.AsyncClient, base_url: str, item: dict[str, Any], spec: RequestSpec,
                   index: int) -> RequestResult:
    path, body = request_body(item, spec, index)
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    start = time.perf_counter()
    res = RequestResult(ok=False, start=start, chunk_tokens=[] if spec.logprobs else None)
    try:
        async with client.stream("POST", base_url.rstrip("/") + path, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                res.error = error_text(resp.status_code, (await resp.aread()).decode(errors="replace"))
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter() - start
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = f"stream error: {chunk['error'].get('message', chunk['error'])}"[:200]
                    return res
                usage = chunk.get("usage")
                if usage:
                    res.prompt_tokens = usage.get("prompt_tokens")
                    res.completion_tokens = usage.get("completion_tokens")
                    res.speculation = usage.get("speculation")
                for choice in chunk.get("choices") or []:
                    text = choice.get("text")
                    if text is None:
                        text = (choice.get("delta") or {}).get("content") or ""
                    m = _chunk_tokens(choice)
                    if not text and not m:
                        continue
                    res.chunk_times.append(now)
                    res.chunk_chars.append(len(text))
                    if res.chunk_tokens is not None:
                        res.chunk_tokens.append(m or 0)
        res.e2e = time.perf_counter() - start
        res.ok = True
        if res.chunk_tokens is not None and not any(res.chunk_tokens):
            res.chunk_tokens = None  # the server ignored logprobs: fall back to usage
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        res.error = f"{type(e).__name__}: {e}"[:200]
    return res


def poisson_arrivals(rate: float, n: int, seed: int) -> list[float]:
    """Arrival offsets (seconds from the start) of n requests with exponential gaps of mean 1/rate."""
    if rate <= 0 or rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def make_client(concurrency: int, timeout: float = 600.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=30.0), limits=limits)


async def run_load(base_url: str, items: Sequence[dict[str, Any]], spec: RequestSpec, *, num_prompts: int,
                   concurrency: int | None = None, request_rate: float | None = None, seed: int = 0,
                   on_done: Callable[[RequestResult], None] | None = None,
                   client: httpx.AsyncClient | None = None) -> tuple[list[RequestResult], float]:
    """Send `num_prompts` requests (dataset records in order, cycling). With `request_rate`, arrivals are Poisson
    (capped at `concurrency` in flight if given); else `concurrency` workers send back to back.
    Returns (results in send order, wall seconds from the first send to the last completion)."""
    own = client is None
    cap = concurrency or num_prompts
    client = client or make_client(cap)
    results: list[RequestResult | None] = [None] * num_prompts
    sem = asyncio.Semaphore(cap)

    async def one(i: int) -> None:
        async with sem:
            r = await send_one(client, base_url, items[i % len(items)], spec, i)
        results[i] = r
        if on_done:
            on_done(r)

    t0 = time.perf_counter()
    try:
        if request_rate:
            arrivals = poisson_arrivals(request_rate, num_prompts, seed)
            tasks = []
            for i, at in enumerate(arrivals):
                delay = at - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
        else:
            await asyncio.gather(*(one(i) for i in range(num_prompts)))
    finally:
        if own:
            await client.aclose()
    duration = time.perf_counter() - t0
    return [r for r in results if r is not None], duration
