"""Hundreds of concurrent streaming clients against 8 slots and a 64-deep queue: every request ends in a complete
stream or a clean 429, none is lost, and afterwards nothing runs, nothing waits and every slot is free."""

from __future__ import annotations

import asyncio
import random
import time

import httpx

from tests.reliability.clients import LOST, OK, REJECTED, health, idle, metrics, stream_chat, wait_idle
from tests.reliability.conftest import MODEL


def _body(i: int) -> dict:
    # 32 tokens each (no early EOS), up to 3 choices: the burst outruns 8 slots and a 64-deep queue on any machine.
    if i % 2:
        return {"model": MODEL, "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 32,
                "ignore_eos": True, "stream": True, "temperature": 0.8, "seed": i}
    return {"model": MODEL, "prompt": f"def f{i}(x):", "max_tokens": 32, "ignore_eos": True, "stream": True,
            "temperature": 0.0, "n": 1 + i % 3}


async def _load(base_url: str, clients: int, waves: int) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as c:
        await wait_idle(c)
        before = await metrics(c)
        peak = {"running": 0, "waiting": 0, "in_flight": 0}
        in_flight = 0
        stop = asyncio.Event()

        async def sampler() -> None:
            while not stop.is_set():
                body = await health(c)
                peak["running"] = max(peak["running"], body.get("running", 0))
                peak["waiting"] = max(peak["waiting"], body.get("waiting", 0))
                await asyncio.sleep(0.05)

        async def one(i: int):
            nonlocal in_flight
            await asyncio.sleep(random.random() * 0.1)  # a burst: arrivals within 100 ms
            in_flight += 1
            peak["in_flight"] = max(peak["in_flight"], in_flight)
            try:
                return await stream_chat(c, _body(i), timeout=180)
            finally:
                in_flight -= 1

        t0 = time.monotonic()
        watch = asyncio.create_task(sampler())
        outcomes = []
        for w in range(waves):
            outcomes += await asyncio.gather(*(one(w * clients + i) for i in range(clients)))
        stop.set()
        await watch
        elapsed = time.monotonic() - t0
        after_idle = await wait_idle(c, timeout=30)
        after = await metrics(c)
        # One good request after the storm of 429s.
        assert (await stream_chat(c, _body(1))).kind == OK
    return {"outcomes": outcomes, "peak": peak, "elapsed": elapsed, "idle": after_idle, "before": before,
            "after": after}


def test_hundreds_of_streams_complete_or_get_clean_429(server, scale, record_property):
    random.seed(0)
    res = asyncio.run(_load(server.base_url, scale.load_clients, scale.load_waves))
    outcomes = res["outcomes"]
    sent = len(outcomes)
    completed = sum(o.kind == OK for o in outcomes)
    rejected = sum(o.kind == REJECTED for o in outcomes)
    lost = [o for o in outcomes if o.kind == LOST]
    summary = (f"load: {sent} sent, {completed} completed, {rejected} rejected (429), {len(lost)} lost; "
               f"peak client concurrency {res['peak']['in_flight']}, peak running {res['peak']['running']}, "
               f"peak waiting {res['peak']['waiting']}; {res['elapsed']:.1f}s")
    print(summary)
    record_property("load", summary)
    assert not lost, ([(o.status, o.detail, round(o.seconds, 2)) for o in lost[:5]],
                      [x for x in server.lines if "WARNING" in x or "ERROR" in x][-20:],
                      [x for x in server.request_logs() if x.get("status") not in (200, 429)][:5])
    assert completed + rejected == sent
    assert completed >= 8 and rejected > 0  # the queue really filled up and the slots really served
    assert idle(res["idle"])
    assert res["peak"]["in_flight"] >= scale.load_clients * 0.5
    m0, m1 = res["before"], res["after"]
    assert m1["specserve_requests_running"] == 0 and m1["specserve_requests_waiting"] == 0
    # every 429 was counted as a rejection
    assert m1["specserve_requests_rejected_total"] - m0.get("specserve_requests_rejected_total", 0) >= rejected
