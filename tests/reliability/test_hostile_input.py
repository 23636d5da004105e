"""Hostile input: hand-made malformed, oversized and out-of-range requests, then schemathesis over the OpenAPI schema.
Each is answered with a 4xx in OpenAI's error shape (never a 5xx, never a hang: every call has a timeout), and the
server keeps serving: a normal request succeeds after the barrage and no slot is left taken."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.reliability.clients import is_openai_error
from tests.reliability.conftest import MODEL

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]
TIMEOUT = 60.0


def _chat(**kw) -> bytes:
    return json.dumps({"model": MODEL, "messages": MSG, "max_tokens": 4, **kw}).encode()


def _comp(**kw) -> bytes:
    return json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 4, **kw}).encode()


def _nested(depth: int, open_: str, close: str, leaf: str = "1") -> bytes:
    return (open_ * depth + leaf + close * depth).encode()


def _deep_content(depth: int) -> bytes:
    inner = '{"type":"text","text":' * depth + '"x"' + "}" * depth
    return ('{"model":"tiny","messages":[{"role":"user","content":[' + inner + "]}]}").encode()


# (name, path, raw body, expected status or None for "any 4xx")
CASES: list[tuple[str, str, bytes, int | None]] = [
    ("invalid json", CHAT, b'{"model": "tiny", "messages": [', 400),
    ("empty body", CHAT, b"", 400),
    ("json array body", CHAT, b"[1, 2, 3]", 400),
    ("json string body", COMP, b'"hello"', 400),
    ("json null body", COMP, b"null", 400),
    ("invalid utf-8", CHAT, b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe\xc3\x28"}]}', 400),
    ("utf-8 lone surrogate escape", CHAT, _chat(messages=[{"role": "user", "content": "\ud800"}]).replace(
        b"\\ud800", b"\\udc00"), None),
    ("nested lists 10k", CHAT, b'{"model":"tiny","messages":[{"role":"user","content":' + _nested(10_000, "[", "]")
     + b"}]}", 400),
    ("nested dicts 10k", COMP, b'{"model":"tiny","prompt":' + _nested(10_000, '{"a":', "}") + b"}", 400),
    ("nested lists 100k", COMP, b'{"model":"tiny","prompt":' + _nested(100_000, "[", "]") + b"}", 400),
    ("nested content parts 5k", CHAT, _deep_content(5_000), 400),
    ("10 MB body", CHAT, _chat(messages=[{"role": "user", "content": "a" * 10_000_000}]), 413),
    ("prompt over the context", COMP, _comp(prompt="hello " * 100_000), 400),
    ("token prompt over the context", COMP, _comp(prompt=[5] * 5000), 400),
    ("model wrong type", CHAT, json.dumps({"model": 5, "messages": MSG}).encode(), 400),
    ("model missing", CHAT, json.dumps({"messages": MSG}).encode(), 400),
    ("messages missing", CHAT, json.dumps({"model": MODEL}).encode(), 400),
    ("messages not a list", CHAT, _chat(messages="hi"), 400),
    ("empty messages", CHAT, _chat(messages=[]), 400),
    ("message not an object", CHAT, _chat(messages=["hi"]), 400),
    ("unknown role", CHAT, _chat(messages=[{"role": "wizard", "content": "hi"}]), 400),
    ("tool role", CHAT, _chat(messages=[{"role": "tool", "content": "hi"}]), 400),
    ("role wrong type", CHAT, _chat(messages=[{"role": 1, "content": "hi"}]), 400),
    ("content wrong type", CHAT, _chat(messages=[{"role": "user", "content": 12}]), 400),
    ("content null", CHAT, _chat(messages=[{"role": "user", "content": None}]), 400),
    ("image part", CHAT, _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     400),
    ("n huge", CHAT, _chat(n=10**12), 400),
    ("n way beyond int64", CHAT, _chat(n=10**40), 400),
    ("n zero", CHAT, _chat(n=0), 400),
    ("n negative", COMP, _comp(n=-3), 400),
    ("n string", COMP, _comp(n="many"), 400),
    ("max_tokens 10^9", CHAT, _chat(max_tokens=10**9), 400),
    ("max_tokens 10^30", COMP, _comp(max_tokens=10**30), 400),
    ("max_tokens zero", COMP, _comp(max_tokens=0), 400),
    ("max_tokens negative", CHAT, _chat(max_tokens=-1), 400),
    ("max_tokens float", CHAT, _chat(max_tokens=1.5), 400),
    ("max_completion_tokens 10^9", CHAT, _chat(max_completion_tokens=10**9), 400),
    ("temperature NaN", CHAT, _chat().replace(b'"max_tokens"', b'"temperature": NaN, "max_tokens"'), 400),
    ("temperature Infinity", CHAT, _chat().replace(b'"max_tokens"', b'"temperature": Infinity, "max_tokens"'), 400),
    ("temperature -Infinity", COMP, _comp().replace(b'"max_tokens"', b'"temperature": -Infinity, "max_tokens"'),
     400),
    ("temperature 1e400", COMP, _comp().replace(b'"max_tokens"', b'"temperature": 1e400, "max_tokens"'), 400),
    ("temperature negative", CHAT, _chat(temperature=-1), 400),
    ("temperature 100", CHAT, _chat(temperature=100), 400),
    ("temperature string", CHAT, _chat(temperature="hot"), 400),
    ("top_p zero", CHAT, _chat(top_p=0), 400),
    ("top_p NaN", COMP, _comp().replace(b'"max_tokens"', b'"top_p": NaN, "max_tokens"'), 400),
    ("top_k negative", COMP, _comp(top_k=-5), 400),
    ("min_p 2", COMP, _comp(min_p=2), 400),
    ("presence_penalty 1e6", CHAT, _chat(presence_penalty=1e6), 400),
    ("frequency_penalty NaN", CHAT, _chat().replace(b'"max_tokens"', b'"frequency_penalty": NaN, "max_tokens"'),
     400),
    ("repetition_penalty 0", COMP, _comp(repetition_penalty=0), 400),
    ("seed 2^80", COMP, _comp(seed=2**80), 400),
    ("seed string", COMP, _comp(seed="x"), 400),
    ("huge int literal", COMP, _comp().replace(b'"max_tokens": 4', b'"max_tokens": ' + b"9" * 20_000), 400),
    ("stop non-string", CHAT, _chat(stop=5), 400),
    ("stop list of ints", CHAT, _chat(stop=[1, 2]), 400),
    ("stop empty string", CHAT, _chat(stop=[""]), 400),
    ("stop 1000 strings", CHAT, _chat(stop=[f"s{i}" for i in range(1000)]), 400),
    ("stop_token_ids out of range", COMP, _comp(stop_token_ids=[10**9]), 400),
    ("stop_token_ids negative", COMP, _comp(stop_token_ids=[-1]), 400),
    ("logit_bias 10^5 entries", CHAT, _chat(logit_bias={str(i): 1 for i in range(100_000)}), 400),
    ("logit_bias key not int", CHAT, _chat(logit_bias={"abc": 1}), 400),
    ("logit_bias token out of range", CHAT, _chat(logit_bias={"999999": 1}), 400),
    ("logit_bias negative token", CHAT, _chat(logit_bias={"-1": 1}), 400),
    ("logit_bias value 1e9", CHAT, _chat(logit_bias={"5": 1e9}), 400),
    ("logit_bias value NaN", CHAT, _chat().replace(b'"max_tokens"', b'"logit_bias": {"5": NaN}, "max_tokens"'), 400),
    ("logit_bias not a dict", CHAT, _chat(logit_bias=[1, 2]), 400),
    ("logprobs list", CHAT, _chat(logprobs=[1], top_logprobs=3), 400),
    ("top_logprobs 10^6", CHAT, _chat(logprobs=True, top_logprobs=10**6), 400),
    ("completions logprobs 100", COMP, _comp(logprobs=100), 400),
    ("stream not bool", CHAT, _chat(stream="sometimes"), 400),
    ("stream_options wrong", CHAT, _chat(stream=True, stream_options="all"), 400),
    ("tools malformed", CHAT, _chat(tools=[{"type": "function", "function": {"name": "bad name!"}}]), 400),
    ("response_format json_schema", CHAT, _chat(response_format={"type": "json_schema"}), 400),
    ("unknown model", CHAT, _chat(model="gpt-9"), 404),
    ("prompt token ids out of range", COMP, _comp(prompt=[1, 2, 10**9]), 400),
    ("prompt token ids negative", COMP, _comp(prompt=[-5, 3]), 400),
    ("prompt token ids huge", COMP, _comp(prompt=[2**70]), 400),
    ("prompt bools", COMP, _comp(prompt=[True, False]), 400),
    ("prompt mixed list", COMP, _comp(prompt=["a", 1]), 400),
    ("prompt empty list", COMP, _comp(prompt=[]), 400),
    ("prompt empty token list", COMP, _comp(prompt=[[]]), 400),
    ("prompt empty string", COMP, _comp(prompt=""), 400),
    ("prompt 10^4 strings", COMP, _comp(prompt=["x"] * 10_000), 400),
    ("prompt null", COMP, _comp(prompt=None), 400),
    ("suffix", COMP, _comp(suffix="tail"), 400),
    ("best_of", COMP, _comp(best_of=5), 400),
    ("echo with logprobs", COMP, _comp(echo=True, logprobs=1), 400),
    ("min_tokens over max_tokens", COMP, _comp(min_tokens=50), 400),
]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as c:
        yield c


@pytest.mark.parametrize("name,path,body,status", CASES, ids=[c[0] for c in CASES])
def test_hand_made_hostile_request(http, name, path, body, status):
    r = http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert 400 <= r.status_code < 500 if status is None else r.status_code == status, (r.status_code, r.text[:500])
    assert is_openai_error(r.json()), r.text[:500]


def test_hostile_headers_and_methods(http):
    cases = [
        ("GET", CHAT, {}, b""),
        ("PUT", COMP, {}, _comp()),
        ("POST", "/v1/nope", {}, _comp()),
        ("POST", CHAT, {"content-type": "text/plain"}, b"not json at all"),
    ]
    for method, path, headers, body in cases:
        r = http.request(method, path, headers=headers, content=body)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
        assert is_openai_error(r.json()), r.text[:300]


def test_lying_content_length_is_refused_without_reading(server):
    """Content-Length of 1 TB and two bytes sent: 413 from the header alone, no wait for the rest."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {10**12}\r\n\r\n{{}}".encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), data[:300]
    assert is_openai_error(json.loads(body)), body


def test_chunked_body_over_the_limit_is_413(http):
    def gen():
        for _ in range(40):
            yield b"x" * 100_000  # 4 MB, no content-length: the streaming limit must catch it

    r = http.post(CHAT, content=gen(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and is_openai_error(r.json())


def test_server_keeps_serving_after_the_barrage(server, http):
    for path, body in ((CHAT, _chat()), (COMP, _comp())):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    server.wait_idle(timeout=30)
