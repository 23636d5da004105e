"""The OpenAI API through the official SDK against a real server: chat, completions, streaming, n, seeds, stop
strings, logprobs, speculation stats, extensions."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import pytest

from tests.server.conftest import API_KEY, MODEL

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "def add(a, b):"}]
GREEDY = {"temperature": 0.0}


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "specserve"


def test_chat_basic(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, **GREEDY)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 12
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert set(u.model_extra["speculation"]) == {"draft_tokens", "accepted_tokens", "target_passes", "forced_tokens"}


def test_chat_content_parts_and_max_completion_tokens(client):
    parts = [{"type": "text", "text": "def add"}, {"type": "text", "text": "(a, b):"}]
    r1 = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}],
                                        max_completion_tokens=7, extra_body={"ignore_eos": True}, **GREEDY)
    r2 = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "def add(a, b):"}],
                                        max_tokens=7, extra_body={"ignore_eos": True}, **GREEDY)
    assert r1.usage.completion_tokens == 7 and r1.choices[0].finish_reason == "length"
    assert r1.choices[0].message.content == r2.choices[0].message.content
    assert r1.usage.prompt_tokens == r2.usage.prompt_tokens


def test_completions_prompt_forms(client):
    r = client.completions.create(model=MODEL, prompt="def add", max_tokens=5, **GREEDY)
    assert r.object == "text_completion" and len(r.choices) == 1
    text = r.choices[0].text
    ids = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=5, **GREEDY)
    assert len(ids.choices) == 1 and ids.usage.prompt_tokens == 3
    multi = client.completions.create(model=MODEL, prompt=["def add", "class Point"], max_tokens=5, n=2, **GREEDY)
    assert [c.index for c in multi.choices] == [0, 1, 2, 3]
    assert multi.choices[0].text == multi.choices[1].text == text  # greedy: both choices of prompt 0 agree
    lists = client.completions.create(model=MODEL, prompt=[[1, 2, 3], [4, 5]], max_tokens=5, **GREEDY)
    assert [c.index for c in lists.choices] == [0, 1] and lists.usage.prompt_tokens == 5
    assert lists.choices[0].text == ids.choices[0].text


def test_completions_echo(client):
    r = client.completions.create(model=MODEL, prompt="def add", max_tokens=4, echo=True, **GREEDY)
    plain = client.completions.create(model=MODEL, prompt="def add", max_tokens=4, **GREEDY)
    assert r.choices[0].text == "def add" + plain.choices[0].text


def test_chat_streaming_with_usage_matches_non_streaming(client):
    kw = dict(model=MODEL, messages=CHAT, max_tokens=20, extra_body={"ignore_eos": True}, **GREEDY)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 20
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert "speculation" in last.usage.model_extra
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_streaming(client):
    kw = dict(model=MODEL, prompt="for i in", max_tokens=10, **GREEDY)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_n_choices(client):
    extra = {"ignore_eos": True, "speculative": False}
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, n=2, seed=3, temperature=1.0,
                                       extra_body=extra)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 16
    stream = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, n=2, seed=3, stream=True,
                                            temperature=1.0, extra_body=extra)
    texts = {0: "", 1: ""}
    for c in stream:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == {c.index: c.message.content for c in r.choices}  # same seed: same samples, streamed or not


def _seeded_texts(client, seeds, speculative: bool) -> list[str]:
    kw = dict(model=MODEL, messages=CHAT, max_tokens=16, temperature=1.0,
              extra_body={"ignore_eos": True, "speculative": speculative})
    return [client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in seeds]


def test_seed_reproducible(client):
    a, b, *others = _seeded_texts(client, [1234, 1234, 1, 2, 3], speculative=False)
    assert a == b
    assert len(set(others) | {a}) > 1  # different seeds do sample differently


def test_seed_reproducible_with_speculation(client):
    # Seeded tokens are keyed Gumbel-max samples (engine/spec_decode/coupled.py): the same at any K, and the same as with
    # speculation off (tests/engine/test_seeds.py).
    a, b, c = _seeded_texts(client, [1234, 1234, 1234], speculative=True)
    assert a == b == c
    assert a == _seeded_texts(client, [1234], speculative=False)[0]


def test_stop_strings(client):
    kw = dict(model=MODEL, prompt="def add", max_tokens=30, extra_body={"ignore_eos": True}, **GREEDY)
    text = client.completions.create(**kw).choices[0].text
    stop = next(text[i:i + 2] for i in range(2, len(text) - 2) if text[i:i + 2].isprintable()
                and "\ufffd" not in text[i:i + 2])
    expected = text[:text.find(stop)]
    r = client.completions.create(stop=stop, **kw)
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    r = client.completions.create(stop=["never-there", stop], **kw)
    assert r.choices[0].text == expected
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kw))
    assert streamed == expected


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True}, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for entry in content:
        assert entry.logprob <= 0 and isinstance(entry.bytes, list) and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)  # greedy = the argmax
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
    assert re.sub(r"<\|\w+\|>", "", joined) == r.choices[0].message.content  # text skips special tokens
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_chat_logprobs_streaming(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, logprobs=True,
                                                 top_logprobs=1, stream=True, extra_body={"ignore_eos": True},
                                                 **GREEDY))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 5


def test_completions_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="def add", max_tokens=5, logprobs=2,
                                  extra_body={"ignore_eos": True}, **GREEDY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_speculation_stats_in_usage(client):
    kw = dict(model=MODEL, prompt="def add(a, b):\n    return a + b\n", max_tokens=40,
              **GREEDY)
    spec = client.completions.create(extra_body={"ignore_eos": True}, **kw)
    s = spec.usage.model_extra["speculation"]
    assert s["draft_tokens"] > 0 and 0 <= s["accepted_tokens"] <= s["draft_tokens"]
    assert 0 < s["target_passes"] <= spec.usage.completion_tokens
    off = client.completions.create(extra_body={"ignore_eos": True, "speculative": False}, **kw)
    s_off = off.usage.model_extra["speculation"]
    assert s_off["draft_tokens"] == 0 and s_off["accepted_tokens"] == 0
    # Lossless: greedy output with speculation equals greedy output without it.
    assert spec.choices[0].text == off.choices[0].text


def test_speculation_usage_sums_choices(client):
    r = client.completions.create(model=MODEL, prompt="for i in range(10):", max_tokens=20, n=2,
                                  extra_body={"ignore_eos": True}, **GREEDY)
    s = r.usage.model_extra["speculation"]
    assert r.usage.completion_tokens == 40
    assert s["target_passes"] >= 2 * (20 // 5)  # both choices counted (each pass yields at most K+1 = 5 tokens)


def test_extensions_and_unknown_fields(client):
    extra = {"top_k": 5, "min_p": 0.01, "repetition_penalty": 1.2, "min_tokens": 4, "ignore_eos": False,
             "some_future_field": {"x": 1}}
    r = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, seed=0, user="u-1",
                                       presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9,
                                       response_format={"type": "text"}, extra_body=extra)
    assert r.usage.completion_tokens >= 4


def test_logit_bias_forces_token(client):
    r = client.completions.create(model=MODEL, prompt="def add", max_tokens=5, logit_bias={"50": 100},
                                  logprobs=0, extra_body={"ignore_eos": True}, **GREEDY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 5 and len(set(lp.tokens)) == 1


def test_request_log_lines(server, client):
    secret = "zebra-unicorn-prompt"
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": secret}], max_tokens=3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(x["id"] == r.id for x in server.request_logs()):
        time.sleep(0.05)
    (rec,) = [x for x in server.request_logs() if x["id"] == r.id]
    assert rec["status"] == 200 and rec["endpoint"] == "chat" and rec["completion_tokens"] == r.usage.completion_tokens
    assert rec["prompt_tokens"] == r.usage.prompt_tokens and rec["ttft_ms"] is not None
    assert {"duration_ms", "draft_tokens", "accepted_tokens", "acceptance", "finish_reason"} <= set(rec)
    assert secret not in server.output()  # prompts are not logged unless --log-prompts


def test_curl_streaming(server):
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}
    out = subprocess.run(
        ["curl", "-N", "-sS", "--max-time", "60", server.v1 + "/chat/completions",
         "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {API_KEY}", "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=90, check=True).stdout
    events = [e for e in out.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert payloads[0]["object"] == "chat.completion.chunk"
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] >= 1


def test_health_json_and_metrics_route(server):
    status, body = server.health()
    assert status == 200 and body["status"] == "ok" and body["model"] == MODEL
    assert body["num_slots"] == 4 and {"running", "waiting", "free_slots"} <= set(body)
    r = httpx.get(server.base_url + "/metrics")  # open without the API key
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")


def test_health_was_503_while_loading(server):
    assert server.health_seen[0] == (503, {"status": "loading"})
