"""Faults injected into one request fail that request alone while the batch goes on; a runner failure fails the
step's requests and turns /health unhealthy with the error. In-process: the real app and a real tiny engine behind
httpx's ASGI transport, faults patched into the engine for requests carrying a marker — no hook in production code."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx

import engine.engine as engine_mod
from config.loader import load_settings
from engine.detokenizer import IncrementalDetokenizer
from server.app import create_app
from tests.reliability.clients import is_openai_error

FAULT_SEED = 4242  # sampling fault marker
FAULT_STOP = "@@fault@@"  # detokenization fault marker


@contextlib.asynccontextmanager
async def serve(target):
    settings = load_settings({"model": str(target), "speculative_method": "ngram", "served_model_name": "tiny",
                              "dtype": "float32", "device": "cpu", "max_num_seqs": 8, "max_model_len": 1024,
                              # faults are injected by patching the engine's objects, so it runs on a thread in this
                              # process; killing the engine process is tests/reliability/test_engine_crash.py
                              "engine_process": False},
                             environ={})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as c:
            for _ in range(600):
                if (await c.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            yield app, c


def _events(text: str) -> list[str]:
    return [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]


def _finished_stream(r: httpx.Response) -> bool:
    ev = _events(r.text)
    return (r.status_code == 200 and ev[-1] == "[DONE]" and not any('"error"' in e for e in ev[:-1])
            and json.loads(ev[-2])["choices"][0]["finish_reason"] in ("stop", "length"))


def _error_event(r: httpx.Response) -> dict:
    ev = _events(r.text)
    assert r.status_code == 200 and ev[-1] == "[DONE]", r.text[-500:]
    body = json.loads(ev[-2])
    assert is_openai_error({"error": {k: v for k, v in body["error"].items() if k != "status"}}), body
    return body["error"]


def _healthy(i: int, stream: bool = True) -> dict:
    return {"model": "tiny", "prompt": f"def ok{i}(x):", "max_tokens": 24, "ignore_eos": True, "stream": stream,
            "temperature": 0.7, "seed": i}


async def _barrage(c: httpx.AsyncClient, faulty: list[dict]) -> tuple[list[httpx.Response], list[httpx.Response]]:
    healthy = [c.post("/v1/completions", json=_healthy(i, stream=i % 2 == 0)) for i in range(6)]
    rs = await asyncio.gather(*healthy, *(c.post("/v1/completions", json=b) for b in faulty))
    return list(rs[:6]), list(rs[6:])


def _check_healthy(rs: list[httpx.Response]) -> None:
    for i, r in enumerate(rs):
        if i % 2 == 0:
            assert _finished_stream(r), r.text[-300:]
        else:
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length", r.text[:300]


def _no_leftovers(app) -> None:
    """Nothing of a finished request stays behind: streams, in-flight count, detokenizers, metric keys."""
    ae = app.state.specserve.engine
    assert ae._streams == {} and ae._in_flight == 0 and ae._pending == []
    assert ae.engine.output.num_open == 0 and ae.engine.scheduler.finished == []
    assert getattr(app.state.metrics, "_last_token", {}) == {}


async def _idle(c: httpx.AsyncClient) -> dict:
    for _ in range(200):
        body = (await c.get("/health")).json()
        if body.get("running") == 0 and body.get("waiting") == 0 and body["free_slots"] == body["num_slots"]:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"not idle: {body}")


def test_sampling_and_detokenization_faults_fail_one_request(tiny_pair, monkeypatch):
    real_select = engine_mod.select_tokens
    real_add = IncrementalDetokenizer.add_token
    calls = {"select": 0, "detok": 0}

    def faulty_select(logits, seqs, *a, **kw):
        if any(s.params.seed == FAULT_SEED for s in seqs):
            calls["select"] += 1
            raise RuntimeError("injected sampling fault")
        return real_select(logits, seqs, *a, **kw)

    def faulty_add(self, token_id, check_stop=True):
        if FAULT_STOP in self.stop:
            calls["detok"] += 1
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenization fault")
        return real_add(self, token_id, check_stop)

    monkeypatch.setattr(engine_mod, "select_tokens", faulty_select)
    monkeypatch.setattr(IncrementalDetokenizer, "add_token", faulty_add)
    faulty = [
        {"model": "tiny", "prompt": "bad sampler", "max_tokens": 24, "seed": FAULT_SEED},
        {"model": "tiny", "prompt": "bad sampler", "max_tokens": 24, "seed": FAULT_SEED, "stream": True},
        {"model": "tiny", "prompt": "bad detok", "max_tokens": 24, "stop": [FAULT_STOP]},
        {"model": "tiny", "prompt": "bad detok", "max_tokens": 24, "stop": [FAULT_STOP], "stream": True},
    ]

    async def go():
        async with serve(tiny_pair[0]) as (app, c):
            healthy, bad = await _barrage(c, faulty)
            _check_healthy(healthy)  # the batch went on
            for r, what in ((bad[0], "sampling failed"), (bad[2], "detokenization failed")):
                assert r.status_code == 500 and is_openai_error(r.json()), r.text
                assert r.json()["error"]["code"] == "request_failed" and what in r.json()["error"]["message"]
            for r, what in ((bad[1], "sampling failed"), (bad[3], "detokenization failed")):
                err = _error_event(r)
                assert err["status"] == 500 and err["code"] == "request_failed" and what in err["message"]
            await _idle(c)
            h = await c.get("/health")
            assert h.status_code == 200 and h.json()["status"] == "ok"  # a request's fault is not the engine's
            assert (await c.post("/v1/completions", json=_healthy(99, stream=False))).status_code == 200
            await _idle(c)
            _no_leftovers(app)

    asyncio.run(go())
    assert calls["select"] >= 2 and calls["detok"] >= 2


def test_runner_failure_fails_the_step_and_reports_unhealthy(tiny_pair, monkeypatch):
    async def go():
        async with serve(tiny_pair[0]) as (app, c):
            llm = app.state.specserve.engine.engine
            real_execute = llm.runner.execute
            armed = {"left": 0, "fired": 0}

            def execute(batch):
                if armed["left"] > 0 and len(batch.slot_ids) >= 3:  # once, on a step with several requests
                    armed["left"] -= 1
                    armed["fired"] += 1
                    raise RuntimeError("injected device fault")
                return real_execute(batch)

            monkeypatch.setattr(llm.runner, "execute", execute)
            assert (await c.get("/health")).status_code == 200
            armed["left"] = 1
            rs = await asyncio.gather(*(c.post("/v1/completions", json=_healthy(i, stream=i % 2 == 0))
                                        for i in range(6)))
            assert armed["fired"] == 1
            failed = 0
            for i, r in enumerate(rs):  # those in the failed step fail cleanly; any others complete
                if i % 2 == 0:
                    if not _finished_stream(r):
                        err = _error_event(r)
                        assert err["status"] == 500 and "model runner failed" in err["message"]
                        failed += 1
                elif r.status_code != 200:
                    assert r.status_code == 500 and is_openai_error(r.json())
                    assert "model runner failed" in r.json()["error"]["message"]
                    failed += 1
            assert failed >= 3
            h = await c.get("/health")
            assert h.status_code == 503 and h.json()["status"] == "unhealthy"
            assert "injected device fault" in h.json()["error"]
            await _idle(c)  # the failed step's slots came back
            # The engine still serves; /health stays unhealthy so an orchestrator replaces the process.
            r = await c.post("/v1/completions", json=_healthy(7, stream=False))
            assert r.status_code == 200
            await _idle(c)
            _no_leftovers(app)

    asyncio.run(go())

