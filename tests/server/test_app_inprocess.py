"""The app in-process (httpx ASGI transport) over a scripted engine: failures a real tiny model cannot be made to
produce on demand, exact usage sums, and the loading / failed / unhealthy health states."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

import httpx

from config.settings import ServerSettings, Settings
from engine.errors import RunnerError
from engine.outputs import RequestOutput, SpecStats, TokenLogprob, TopLogprob
from server.app import create_app
from tests.server.fake_engine import FakeEngine, text_outputs

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


@contextlib.asynccontextmanager
async def serve(engine=None, factory=None, wait_ready=True, **server):
    app = create_app(Settings(server=ServerSettings(**server)), engine=engine, engine_factory=factory)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for _ in range(200):
                if not wait_ready or (await client.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            yield app, client


def run(coro):
    return asyncio.run(coro)


def sse_events(text: str) -> list[str]:
    return [e[len("data: "):] for e in text.split("\n\n") if e.strip()]


def test_unexpected_exception_is_500_in_openai_shape():
    def script(rid, ids, params):
        raise RuntimeError("boom")

    async def go():
        async with serve(FakeEngine(script)) as (_, c):
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 500
            assert r.json() == {"error": {"message": "internal server error", "type": "server_error", "param": None,
                                          "code": "internal_error"}}
            assert (await c.get("/health")).status_code == 200  # the server lives on

    run(go())


def test_engine_error_finish_is_500_or_sse_error():
    def script(rid, ids, params):
        return [RequestOutput(rid, 0, [65], "A"),
                RequestOutput(rid, 0, [], "", finished=True, finish_reason="error", error="sampler exploded")]

    async def go():
        async with serve(FakeEngine(script)) as (_, c):
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 500 and r.json()["error"]["code"] == "request_failed"
            assert "sampler exploded" in r.json()["error"]["message"]
            r = await c.post("/v1/completions", json={"model": "fake", "prompt": "x", "stream": True})
            assert r.status_code == 200
            events = sse_events(r.text)
            assert events[-1] == "[DONE]"
            err = json.loads(events[-2])["error"]
            assert err["code"] == "request_failed" and err["status"] == 500

    run(go())


def test_runner_error_raised_mid_stream():
    def script(rid, ids, params):
        return [RequestOutput(rid, 0, [65], "A"), RunnerError("device lost")]

    async def go():
        async with serve(FakeEngine(script)) as (_, c):
            r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
            events = sse_events(r.text)
            assert json.loads(events[1])["choices"][0]["delta"]["content"] == "A"
            assert json.loads(events[-2])["error"]["code"] == "runner_failed" and events[-1] == "[DONE]"

    run(go())


def test_usage_sums_choices_and_prompts():
    def script(rid, ids, params):
        return text_outputs(rid, params, len(ids), "xyz", SpecStats(draft_tokens=4, accepted_tokens=3,
                                                                    target_passes=2))

    async def go():
        async with serve(FakeEngine(script)) as (_, c):
            r = await c.post("/v1/completions", json={"model": "fake", "prompt": ["ab", "cde"], "n": 2})
            body = r.json()
            assert [ch["text"] for ch in body["choices"]] == ["xyz"] * 4
            assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17,
                                     "speculation": {"draft_tokens": 16, "accepted_tokens": 12, "target_passes": 8,
                                                     "forced_tokens": 0}}

    run(go())


def test_logprob_shapes():
    def script(rid, ids, params):
        lp = [TokenLogprob(66, -0.5, [TopLogprob(66, -0.5), TopLogprob(67, float("-inf"))])]
        return [RequestOutput(rid, 0, [66], "B", logprobs=lp, finished=True, finish_reason="stop",
                              num_prompt_tokens=1, num_output_tokens=1)]

    async def go():
        async with serve(FakeEngine(script)) as (_, c):
            r = (await c.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2})).json()
            entry = r["choices"][0]["logprobs"]["content"][0]
            assert entry == {"token": "B", "logprob": -0.5, "bytes": [66], "top_logprobs": [
                {"token": "B", "logprob": -0.5, "bytes": [66]}, {"token": "C", "logprob": -9999.0, "bytes": [67]}]}
            r = (await c.post("/v1/completions", json={"model": "fake", "prompt": "ab", "logprobs": 2,
                                                       "echo": False})).json()
            assert r["choices"][0]["logprobs"] == {"tokens": ["B"], "token_logprobs": [-0.5],
                                                   "top_logprobs": [{"B": -0.5, "C": -9999.0}], "text_offset": [0]}

    run(go())


def test_health_states_loading_ready_unhealthy():
    release = threading.Event()
    engine = FakeEngine()

    def factory(settings):
        release.wait(10)
        return engine

    async def go():
        async with serve(factory=factory, wait_ready=False) as (app, c):
            r = await c.get("/health")
            assert r.status_code == 503 and r.json() == {"status": "loading"}
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
            assert r.headers["retry-after"]
            release.set()
            for _ in range(200):
                if (await c.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert engine.started
            body = (await c.get("/health")).json()
            assert body == {"status": "ok", "model": "fake", "running": 0, "waiting": 0, "free_slots": 4,
                            "num_slots": 4}
            engine.fake_stats.healthy, engine.fake_stats.error = False, "runner crashed"
            r = await c.get("/health")
            assert r.status_code == 503 and r.json()["status"] == "unhealthy" and r.json()["error"] == "runner crashed"
        assert engine.stopped

    run(go())


def test_load_failure_reports_and_calls_on_fatal():
    def factory(settings):
        raise FileNotFoundError("no such model")

    async def go():
        async with serve(factory=factory, wait_ready=False) as (app, c):
            fatal = []
            app.state.specserve.on_fatal = fatal.append
            for _ in range(200):
                if (await c.get("/health")).json()["status"] == "failed":
                    break
                await asyncio.sleep(0.01)
            r = await c.get("/health")
            assert r.status_code == 503 and "no such model" in r.json()["error"]
            r = await c.post("/v1/completions", json={"model": "fake", "prompt": "x"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_load_failed"

    run(go())


def test_draining_refuses_new_requests():
    async def go():
        engine = FakeEngine()
        async with serve(engine) as (app, c):
            await app.state.specserve.drain()
            assert engine.draining
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 503 and r.json()["error"]["code"] == "server_draining"
            assert (await c.get("/health")).json()["status"] == "draining"

    run(go())


def test_deadline_aborts_engine_request():
    async def go():
        engine = FakeEngine(delay=0.2)
        async with serve(engine, request_timeout=0.1) as (_, c):
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
            assert engine.aborted  # the engine request was aborted, its slot freed

    run(go())


def test_partial_multi_prompt_admission_is_undone():
    from engine.errors import QueueFullError

    calls = []

    def script(rid, ids, params):
        calls.append(rid)
        if len(calls) == 2:
            raise QueueFullError("full")
        return text_outputs(rid, params, len(ids))

    async def go():
        engine = FakeEngine(script)
        async with serve(engine) as (_, c):
            r = await c.post("/v1/completions", json={"model": "fake", "prompt": ["a", "b", "c"]})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert engine.aborted == [calls[0]]  # the first prompt's request, already admitted, was aborted

    run(go())


def test_log_prompts_includes_prompt_only_when_enabled(caplog):
    async def go(log_prompts):
        async with serve(FakeEngine(), log_prompts=log_prompts) as (_, c):
            await c.post("/v1/completions", json={"model": "fake", "prompt": "secret-prompt"})

    caplog.set_level("INFO", logger="specserve.requests")
    run(go(False))
    assert "secret-prompt" not in caplog.text and '"status": 200' in caplog.text
    run(go(True))
    assert "secret-prompt" in caplog.text


def test_listeners_see_outputs_and_final_status():
    class Listener:
        def __init__(self):
            self.outputs, self.finished = 0, []

        def on_output(self, rec, out):
            self.outputs += 1

        def on_finish(self, rec):
            self.finished.append((rec.endpoint, rec.status, rec.completion_tokens))

    class Broken:
        def on_output(self, rec, out):
            raise RuntimeError("metrics bug")

        def on_finish(self, rec):
            raise RuntimeError("metrics bug")

    async def go():
        async with serve(FakeEngine()) as (app, c):
            listener = Listener()
            app.state.specserve.listeners += [listener, Broken()]
            assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
            assert (await c.post("/v1/chat/completions", json={**CHAT, "n": 99})).status_code == 400
            assert listener.outputs == 3
            assert listener.finished == [("chat", 200, 3), ("chat", 400, 0)]

    run(go())


def test_requests_refused_before_serving_are_logged_once(caplog):
    async def go():
        async with serve(FakeEngine(), api_key="k") as (_, c):
            await c.post("/v1/chat/completions", json=CHAT)  # 401
            await c.post("/v1/chat/completions", content=b"{oops", headers={"Authorization": "Bearer k"})  # 400
            await c.post("/v1/chat/completions", json={**CHAT, "model": "x"}, headers={"Authorization": "Bearer k"})

    caplog.set_level("INFO", logger="specserve.requests")
    run(go())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "specserve.requests"]
    assert [x["status"] for x in lines] == [401, 400, 404]
