"""Every protective limit is configurable, enforced, and refused with a clear 4xx/504 naming the field: body size,
prompt tokens (max_model_len), n, max_tokens, stop strings, logit_bias entries, the per-request deadline."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.reliability.clients import is_openai_error
from tests.reliability.conftest import MAX_MODEL_LEN, MODEL, server_args
from tests.server.server_proc import ServerProcess

LIMITS = {"--max-body-bytes": 16384, "--max-n": 2, "--max-stop-strings": 2, "--max-logit-bias": 3,
          "--request-timeout": 4}


@pytest.fixture(scope="module")
def limited(tiny_pair):
    flags = [x for kv in LIMITS.items() for x in kv]
    proc = ServerProcess(*server_args(tiny_pair[0], *flags), env={"OMP_NUM_THREADS": "1"}).start()
    yield proc
    proc.stop()


def _comp(**kw) -> dict:
    return {"model": MODEL, "prompt": "hi", "max_tokens": 4, **kw}


CASES = [
    # (name, body, status, param, message fragment)
    ("body size", _comp(prompt="x" * 20_000), 413, None, "16384 bytes"),
    ("prompt tokens", _comp(prompt=[5] * MAX_MODEL_LEN), 400, "prompt", "maximum context length"),
    ("max_tokens", _comp(max_tokens=MAX_MODEL_LEN), 400, "max_tokens", "maximum context length"),
    ("n", _comp(n=3), 400, "n", "at most 2"),
    ("stop strings", _comp(stop=["a", "b", "c"]), 400, "stop", "at most 2"),
    ("logit_bias entries", _comp(logit_bias={"1": 1, "2": 1, "3": 1, "4": 1}), 400, "logit_bias", "at most 3"),
]


@pytest.mark.parametrize("name,body,status,param,fragment", CASES, ids=[c[0] for c in CASES])
def test_limit_enforced(limited, name, body, status, param, fragment):
    r = httpx.post(limited.v1 + "/completions", json=body, timeout=60)
    assert r.status_code == status, r.text[:300]
    err = r.json()
    assert is_openai_error(err) and fragment in err["error"]["message"], err
    if param is not None:
        assert err["error"]["param"] == param, err


def test_limits_at_the_edge_are_accepted(limited):
    for body in (_comp(n=2, stop=["a", "b"], logit_bias={"1": 1, "2": 1, "3": 1}),
                 _comp(prompt=[5] * (MAX_MODEL_LEN - 4))):
        r = httpx.post(limited.v1 + "/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text[:300]


def test_request_deadline(limited):
    """Nine requests that would each take thousands of steps (8 slots busy, one queued): every one ends at the 4 s
    deadline — 504 when not streamed, an error event then [DONE] when streamed — and the slots come back."""
    body = _comp(max_tokens=MAX_MODEL_LEN - 16, ignore_eos=True, speculative=False)  # one token per step

    async def one(c: httpx.AsyncClient, stream: bool) -> tuple[int, str]:
        if not stream:
            r = await c.post("/v1/completions", json=body)
            return r.status_code, r.text
        async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            return r.status_code, (await r.aread()).decode()

    async def go() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=limited.base_url, timeout=60) as c:
            return await asyncio.gather(*(one(c, stream=i % 2 == 1) for i in range(9)))

    t0 = time.monotonic()
    results = asyncio.run(go())
    assert time.monotonic() - t0 < 30
    for i, (status, text) in enumerate(results):
        if i % 2 == 0:
            assert status == 504 and json.loads(text)["error"]["code"] == "request_timeout", text[:300]
        else:
            assert status == 200 and '"request_timeout"' in text and text.rstrip().endswith("data: [DONE]")
    limited.wait_idle(timeout=10)  # the timed-out requests gave their slots back
