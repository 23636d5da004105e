"""specserve_http_responses_total{handler, status}: every response counted once by route template and status,
streamed ones included; unknown paths share one `other` series (issue 17 item 8). In-process over a fake engine."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from config.settings import ServerSettings, Settings
from server.app import create_app
from tests.server.fake_engine import FakeEngine

NAME = "specserve_http_responses_total"


def responses(text: str) -> dict[tuple[str, str], float]:
    return {(s.labels["handler"], s.labels["status"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == NAME}


async def scenario() -> tuple[dict, dict]:
    app = create_app(Settings(server=ServerSettings(api_key="k")), engine=FakeEngine())
    auth = {"Authorization": "Bearer k"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            for _ in range(200):
                if (await c.get("/health")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            before = responses((await c.get("/metrics")).text)
            assert (await c.get("/v1/models", headers=auth)).status_code == 200
            assert (await c.get("/v1/models/fake", headers=auth)).status_code == 200
            assert (await c.get("/v1/models/nope", headers=auth)).status_code == 404
            assert (await c.get("/v1/models")).status_code == 401
            for path in ("/wp-login.php", "/.env"):
                assert (await c.get(path)).status_code == 404
            body = {"model": "fake", "prompt": "hi", "max_tokens": 2, "stream": True}
            r = await c.post("/v1/completions", headers=auth, json=body)
            assert r.status_code == 200 and "[DONE]" in r.text
            assert (await c.post("/v1/completions", headers=auth, json={**body, "max_tokens": -1})).status_code == 400
            after = responses((await c.get("/metrics")).text)
    return before, after


def test_responses_by_route_template_and_status():
    before, after = asyncio.run(scenario())
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}
    assert delta == {
        ("/v1/models", "200"): 1, ("/v1/models", "401"): 1,
        ("/v1/models/{model_id:path}", "200"): 1, ("/v1/models/{model_id:path}", "404"): 1,
        ("other", "404"): 2,
        ("/v1/completions", "200"): 1, ("/v1/completions", "400"): 1,
        ("/metrics", "200"): 1,  # the scrape that read `before`
    }
    assert before.get(("/health", "200"), 0) >= 1
