"""SIGTERM while dozens of streams run or wait: every in-flight stream finishes normally, new requests get 503 in
OpenAI's shape, /health says draining, and the process exits 0 within the drain timeout."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.reliability.clients import OK, is_openai_error, stream_chat
from tests.reliability.conftest import MODEL, server_args
from tests.server.server_proc import ServerProcess

DRAIN_TIMEOUT = 30


async def _run(proc: ServerProcess, streams: int) -> dict:
    limits = httpx.Limits(max_connections=streams + 8)
    async with httpx.AsyncClient(base_url=proc.base_url, limits=limits, timeout=120) as c:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "max_tokens": 48,
                "ignore_eos": True, "stream": True}
        tasks = [asyncio.create_task(stream_chat(c, {**body, "seed": i}, timeout=DRAIN_TIMEOUT + 60))
                 for i in range(streams)]
        for _ in range(400):  # until every stream is admitted (running or waiting)
            h = (await c.get("/health")).json()
            if h.get("running", 0) + h.get("waiting", 0) >= streams:
                break
            await asyncio.sleep(0.05)
        assert h["running"] + h["waiting"] >= streams, h
        t0 = time.monotonic()
        proc.terminate()  # SIGTERM
        refused, health_seen = [], None
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:  # NOTE: the listener may close between any two calls once the last stream ends (a fast step
                # drains in well under a second), so each call may be the first to find it gone
                health_seen = health_seen or await c.get("/health")
                r = await c.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
            except httpx.HTTPError:
                break  # the listener closed: drained already
            refused.append((r.status_code, r.json()))
            if len(refused) >= 3:
                break
        outcomes = await asyncio.gather(*tasks)
        done_s = time.monotonic() - t0
        rc = await asyncio.to_thread(proc.proc.wait, DRAIN_TIMEOUT + 30)
        exit_s = time.monotonic() - t0
    return {"outcomes": outcomes, "refused": refused, "health": health_seen, "rc": rc, "done_s": done_s,
            "exit_s": exit_s, "admitted": h}


def test_sigterm_under_load_drains_every_stream(tiny_pair, scale, record_property):
    proc = ServerProcess(*server_args(tiny_pair[0], "--drain-timeout", DRAIN_TIMEOUT, "--max-queue", 256),
                         env={"OMP_NUM_THREADS": "1"}).start()
    try:
        res = asyncio.run(_run(proc, scale.shutdown_streams))
    finally:
        proc.stop()
    outcomes = res["outcomes"]
    completed = sum(o.kind == OK for o in outcomes)
    summary = (f"SIGTERM under load: {len(outcomes)} streams in flight ({res['admitted']['running']} running, "
               f"{res['admitted']['waiting']} waiting), {completed} completed, {len(res['refused'])} new requests "
               f"refused with 503; streams done {res['done_s']:.1f}s and exit {res['rc']} {res['exit_s']:.1f}s "
               f"after SIGTERM (drain timeout {DRAIN_TIMEOUT}s)")
    print(summary)
    record_property("shutdown", summary)
    assert completed == len(outcomes), [o.detail for o in outcomes if o.kind != OK][:5]
    assert all(reason == "length" for o in outcomes for reason in o.finish_reasons)
    assert res["refused"], "no request was tried while draining"
    for status, body in res["refused"]:
        assert status == 503 and is_openai_error(body) and body["error"]["code"] in (
            "server_draining", "engine_unavailable"), body
    assert res["health"] is not None and res["health"].status_code == 503
    assert res["health"].json()["status"] == "draining"
    assert res["rc"] == 0 and res["exit_s"] < DRAIN_TIMEOUT
    assert "drained" in proc.output()
