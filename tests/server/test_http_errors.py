"""Every error the main server can answer with: its status and OpenAI's error shape, never a 500 or a bare 422."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY, MODEL

CHAT = [{"role": "user", "content": "hi"}]


def _post(server, path: str, body=None, *, content: bytes | None = None, headers=None) -> httpx.Response:
    h = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **(headers or {})}
    return httpx.post(server.v1 + path, json=body if content is None else None, content=content, headers=h,
                      timeout=60)


def _assert_error(r: httpx.Response, status: int, *, code=None, param=None, in_message: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    if in_message is not None:
        assert in_message in err["message"]
    return err


def chat(**kw):
    return {"model": MODEL, "messages": CHAT, "max_tokens": 4, **kw}


def comp(**kw):
    return {"model": MODEL, "prompt": "hi", "max_tokens": 4, **kw}


BAD_REQUESTS = [
    # (path, body, param, message fragment)
    ("/chat/completions", chat(temperature="hot"), "temperature", None),
    ("/chat/completions", chat(temperature=5), "temperature", "between 0 and 2"),
    ("/chat/completions", chat(top_p=0), "top_p", None),
    ("/chat/completions", chat(max_tokens=0), "max_tokens", None),
    ("/chat/completions", chat(n=5), "n", "at most 4"),
    ("/chat/completions", chat(stop=[f"s{i}" for i in range(9)]), "stop", "at most 8"),
    ("/chat/completions", chat(logit_bias={"abc": 1}), "logit_bias", None),
    ("/chat/completions", chat(logit_bias={"99999999": 1}), "logit_bias", None),
    ("/chat/completions", chat(top_logprobs=2), "top_logprobs", "logprobs"),
    ("/chat/completions", chat(logprobs=True, top_logprobs=50), "top_logprobs", None),
    ("/chat/completions", chat(tools=[{"type": "function"}]), "tools", "function"),
    ("/chat/completions", chat(tool_choice="auto"), "tool_choice", "requires tools"),
    ("/chat/completions", chat(functions=[{"name": "f"}]), "functions", None),
    ("/chat/completions", chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "if": {"type": "object"}, "then": {}}}}), "response_format", '"if"'),
    ("/completions", comp(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "pattern": "(?<=a)b"}}}), "response_format", "look-around"),
    ("/chat/completions", chat(response_format={"type": "yaml"}), "response_format", "yaml"),
    ("/chat/completions", {"model": MODEL, "messages": []}, "messages", None),
    ("/chat/completions", {"model": MODEL}, "messages", None),
    ("/chat/completions", {"messages": CHAT}, "model", None),
    ("/chat/completions", chat(messages=[{"role": "robot", "content": "x"}]), "messages.0.role", None),
    ("/chat/completions", chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages.0.content.0", "only text"),
    ("/completions", comp(suffix="tail"), "suffix", "not supported"),
    ("/completions", comp(prompt=["a", 1]), "prompt", "list of strings"),
    ("/completions", comp(prompt=[]), "prompt", None),
    ("/completions", comp(prompt=[999999]), "prompt", "vocabulary"),
    ("/completions", comp(echo=True, logprobs=1), "echo", None),
    ("/completions", comp(presence_penalty=3), "presence_penalty", None),
    ("/completions", comp(logprobs=50), "logprobs", "logprobs"),
    ("/completions", comp(prompt="x " * 5000), "prompt", "4096"),  # prompt too long names the limit
    ("/completions", comp(max_tokens=5000), "max_tokens", "4096"),
    ("/chat/completions", chat(messages=[{"role": "user", "content": "x " * 5000}]), "messages", "4096"),
]


@pytest.mark.parametrize(("path", "body", "param", "fragment"), BAD_REQUESTS,
                         ids=[f"{p[1:]}-{b.get('model', 'nomodel')}-{i}" for i, (p, b, _, _) in
                              enumerate(BAD_REQUESTS)])
def test_bad_request(server, path, body, param, fragment):
    err = _assert_error(_post(server, path, body), 400, param=param, in_message=fragment)
    assert err["type"] == "invalid_request_error"


def test_prompt_too_long_code(server):
    err = _assert_error(_post(server, "/completions", comp(prompt="x " * 5000)), 400)
    assert err["code"] == "context_length_exceeded"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"", "\"caf\xe9\"".encode("latin-1")])
def test_invalid_json(server, content):
    _assert_error(_post(server, "/chat/completions", content=content), 400)


def test_body_too_large(server):
    big = b'{"model": "tiny", "prompt": "' + b"x" * 70000 + b'"}'
    _assert_error(_post(server, "/completions", content=big), 413, code="request_too_large")

    def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(20):
            yield b"x" * 5000
        yield b'"}'

    r = httpx.post(server.v1 + "/completions", content=chunks(), timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    _assert_error(r, 413)


def test_unknown_model_404(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    _assert_error(_post(server, "/completions", comp(model="nope")), 404, code="model_not_found")


def test_unknown_route_and_method(server):
    _assert_error(httpx.get(server.base_url + "/v2/nothing", headers=server.headers()), 404)
    _assert_error(httpx.get(server.v1 + "/chat/completions", headers=server.headers()), 405)


def test_auth(server):
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(api_key="wrong").chat.completions.create(model=MODEL, messages=CHAT)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    _assert_error(httpx.get(server.v1 + "/models"), 401, code="invalid_api_key")
    _assert_error(httpx.get(server.v1 + "/models", headers={"Authorization": "Basic abc"}), 401)
    assert httpx.get(server.v1 + "/models", headers=server.headers()).status_code == 200
    assert httpx.get(server.base_url + "/health").status_code == 200  # open
    assert httpx.get(server.base_url + "/metrics").status_code == 200  # open


def test_sdk_maps_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=CHAT, temperature=9)
    assert e.value.param == "temperature"


def test_streaming_request_errors_before_headers_are_http_errors(server):
    # Validation happens before the stream starts, so a bad streaming request is a plain HTTP 400, not an SSE event.
    _assert_error(_post(server, "/chat/completions", chat(stream=True, temperature=9)), 400, param="temperature")
