"""The engine-core process is killed (SIGKILL, as the OOM killer does) under load: every request is answered (a clean
5xx or SSE error, none hangs), /health says why with a 503, the engine is respawned and the same API process serves
again. With restarts off, /health stays 503 and requests get 503s."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time

import openai
import pytest

from tests.reliability.conftest import MODEL, server_args
from tests.server.server_proc import ServerProcess

pytestmark = pytest.mark.timeout(240)

LONG = {"max_tokens": 2000, "temperature": 0, "extra_body": {"ignore_eos": True}}  # runs for seconds on the tiny model


def _wait_health(proc: ServerProcess, pred, timeout: float = 60.0) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    seen = (0, {})
    while time.monotonic() < deadline:
        seen = proc.health()
        if pred(*seen):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"/health never matched; last {seen}\n{proc.output()[-3000:]}")


def _stream(client: openai.OpenAI, started: threading.Event) -> str:
    try:
        stream = client.completions.create(model=MODEL, prompt="def add(a, b):", stream=True, **LONG)
        for _ in stream:
            started.set()
        return "finished"
    except openai.APIError as e:  # the SDK raises on the SSE error event
        started.set()
        return f"error: {e}"


def _plain(client: openai.OpenAI) -> str:
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], **LONG)
        return "finished"
    except openai.APIStatusError as e:  # 500 if it was in flight, 503 if it arrived while the engine was down
        assert e.status_code in (500, 503), e
        assert "engine process died" in e.message, e.message
        return f"error {e.status_code}: {e.message}"


def test_kill_engine_under_load_then_serve_again(tiny_pair):
    proc = ServerProcess(*server_args(tiny_pair[0], "--engine-process"), env={"OMP_NUM_THREADS": "1"}).start()
    try:
        status, body = proc.health()
        assert status == 200 and body["engine_restarts"] == 0
        pid = body["engine_pid"]
        assert pid and pid != proc.proc.pid
        client = proc.client(timeout=60)
        started = [threading.Event() for _ in range(4)]
        with cf.ThreadPoolExecutor(8) as pool:
            streams = [pool.submit(_stream, client, ev) for ev in started]
            plains = [pool.submit(_plain, client) for _ in range(4)]
            for ev in started:
                assert ev.wait(30), proc.output()[-3000:]
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            status, body = _wait_health(proc, lambda s, b: s == 503)
            assert "engine process died (killed by SIGKILL)" in body["error"], body
            results = [f.result(timeout=30) for f in streams + plains]
            answered_in = time.monotonic() - t0
        assert all(r.startswith("error") for r in results), results  # 2000 tokens each: none could have finished
        assert all("engine process died" in r for r in results), results
        assert answered_in < 10, f"requests took {answered_in:.1f}s to end after the kill"

        status, body = _wait_health(proc, lambda s, b: s == 200, timeout=90)
        assert body["engine_restarts"] == 1 and body["engine_pid"] not in (None, pid)
        out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=8)
        assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens >= 1
        assert proc.proc.poll() is None  # the same API process
        metrics = _get(proc, "/metrics")
        assert "specserve_requests_running" in metrics and "specserve_prompt_tokens_total" in metrics
    finally:
        proc.stop()


def test_no_restart_stays_down(tiny_pair):
    proc = ServerProcess(*server_args(tiny_pair[0], "--engine-process", "--no-engine-restart"),
                         env={"OMP_NUM_THREADS": "1"}).start()
    try:
        os.kill(proc.health()[1]["engine_pid"], signal.SIGKILL)
        status, body = _wait_health(proc, lambda s, b: s == 503)
        assert "restarting" not in body["error"]
        time.sleep(1.0)
        assert proc.health()[0] == 503
        with pytest.raises(openai.APIStatusError) as exc:
            proc.client().completions.create(model=MODEL, prompt="x", max_tokens=4)
        assert exc.value.status_code == 503
        assert proc.stop() == 0  # SIGTERM still drains and exits cleanly with the engine gone
    finally:
        proc.stop()


def _get(proc: ServerProcess, path: str) -> str:
    import httpx

    return httpx.get(proc.base_url + path, timeout=10).text
