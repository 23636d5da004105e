"""Clients that vanish at random points — before the first byte, during a long prefill, mid-stream, while waiting for
a non-streamed body — abort their engine requests: afterwards no zombie keeps decoding (the generated-token and step
counters stop), nothing runs or waits, and every slot is back in the pool."""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from tests.reliability.clients import OK, idle, metrics, stream_chat, wait_idle
from tests.reliability.conftest import MODEL

LONG_PROMPT = list(range(10, 310)) * 10  # 3000 token ids: several prefill chunks at 512 tokens per step
KINDS = ("before_first_token", "during_prefill", "mid_stream", "non_streaming")


def _body(kind: str, i: int) -> dict:
    # ignore_eos + a large max_tokens: no request of the storm can end by itself while the storm lasts.
    base = {"model": MODEL, "max_tokens": 1000, "ignore_eos": True, "temperature": 1.0, "seed": i}
    if kind == "during_prefill":
        return {**base, "prompt": LONG_PROMPT, "stream": True}
    if kind == "non_streaming":
        return {**base, "messages": [{"role": "user", "content": f"tell me {i}"}]}
    return {**base, "prompt": f"def f{i}(x):", "stream": True, "n": 1 + i % 2}


async def _vanish(base_url: str, kind: str, i: int) -> str:
    """Open a request and drop the connection at a random point of `kind`; returns what happened before."""
    rnd = random.Random(i)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as c:  # own connection: closing it is the signal
        body = _body(kind, i)
        if kind == "non_streaming":
            task = asyncio.create_task(c.post("/v1/chat/completions", json=body))
            await asyncio.sleep(rnd.uniform(0.05, 1.5))
            task.cancel()
            try:
                r = await task
                return f"answered {r.status_code}"  # only a 429 can come back this early
            except (asyncio.CancelledError, httpx.HTTPError):
                return "cancelled"
        path = "/v1/completions"
        if kind == "before_first_token":
            task = asyncio.create_task(_read_some(c, path, body, chunks=10**6))
            await asyncio.sleep(rnd.uniform(0.0, 0.05))
            task.cancel()
            try:
                return await task
            except (asyncio.CancelledError, httpx.HTTPError):
                return "cancelled"
        if kind == "during_prefill":
            task = asyncio.create_task(_read_some(c, path, body, chunks=10**6))
            await asyncio.sleep(rnd.uniform(0.05, 0.6))
            task.cancel()
            try:
                return await task
            except (asyncio.CancelledError, httpx.HTTPError):
                return "cancelled"
        return await _read_some(c, path, body, chunks=rnd.randint(1, 30))


async def _read_some(c: httpx.AsyncClient, path: str, body: dict, chunks: int) -> str:
    async with c.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return f"answered {r.status_code}"
        seen = 0
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= chunks:
                    return f"left after {seen} chunks"  # leaving the block closes the connection
    return "ran to the end"


async def _storm(base_url: str, clients: int) -> dict:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as c:
        await wait_idle(c)
        kinds = [KINDS[i % len(KINDS)] for i in range(clients)]
        t0 = time.monotonic()
        results = await asyncio.gather(*(_vanish(base_url, k, i) for i, k in enumerate(kinds)))
        storm_s = time.monotonic() - t0
        body = await wait_idle(c, timeout=30)
        # Zombie check: two samples apart; a request that outlived its client would keep generating tokens.
        m1 = await metrics(c)
        await asyncio.sleep(1.5)
        m2 = await metrics(c)
        h2 = await c.get("/health")
        ok = await stream_chat(c, {"model": MODEL, "messages": [{"role": "user", "content": "still there?"}],
                                   "max_tokens": 4, "stream": True})
        after = await wait_idle(c)
    return {"kinds": kinds, "results": results, "idle": body, "m1": m1, "m2": m2, "health2": h2.json(),
            "ok": ok, "after": after, "storm_s": storm_s}


def test_disconnect_storm_leaks_nothing(server, scale, record_property):
    res = asyncio.run(_storm(server.base_url, scale.storm_clients))
    results = res["results"]
    ran_out = [r for r in results if r == "ran to the end"]
    assert not ran_out  # each request was still generating when its client left
    injected = sum(not r.startswith("answered") for r in results)
    by_kind = {k: sum(1 for kk, r in zip(res["kinds"], results, strict=True) if kk == k and not r.startswith("answered"))
               for k in KINDS}
    leaked = res["idle"]["num_slots"] - res["idle"]["free_slots"]
    summary = (f"disconnect storm: {len(results)} clients, {injected} disconnects injected {by_kind}, "
               f"{len(results) - injected} answered early (429), {leaked} slots leaked; storm {res['storm_s']:.1f}s")
    print(summary)
    record_property("storm", summary)
    assert injected >= len(results) * 0.5
    assert leaked == 0 and idle(res["idle"]) and idle(res["health2"])
    for name in ("specserve_generation_tokens_total", "specserve_spec_decode_steps_total"):
        assert name in res["m2"], sorted(res["m2"])
        assert res["m2"][name] == res["m1"][name], f"{name} still growing after the storm: zombie decoding"
    assert res["m2"]["specserve_requests_running"] == 0 and res["m2"]["specserve_requests_waiting"] == 0
    assert res["ok"].kind == OK, res["ok"].detail
    assert idle(res["after"])
