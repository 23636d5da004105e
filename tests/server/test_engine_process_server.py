"""`specserve serve --engine-process` through the OpenAI SDK: streaming with usage, response_format across the process
boundary, 400s still raised in the API process, metrics mirrored from the core, SIGTERM drains an in-flight request
and leaves no engine process behind."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import openai
import pytest

from tests.server.server_proc import ServerProcess

pytestmark = pytest.mark.timeout(180)
MODEL = "tiny"


@pytest.fixture(scope="module")
def proc(tiny_pair):
    target, draft = tiny_pair
    p = ServerProcess("--model", target, "--draft-model", draft, "--speculative-method", "draft",
                      "--speculative-policy", "static", "--served-model-name", MODEL, "--dtype", "float32",
                      "--max-num-seqs", "4", "--max-model-len", "512", "--engine-process",
                      env={"OMP_NUM_THREADS": "1"}).start()
    yield p
    p.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_stream_usage_and_metrics(proc):
    client = proc.client()
    before = httpx.get(proc.base_url + "/metrics").text
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    usage = chunks[-1].usage
    assert usage.completion_tokens == 12
    assert usage.model_extra["speculation"]["target_passes"] >= 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    after = httpx.get(proc.base_url + "/metrics").text
    gen = "specserve_generation_tokens_total"
    assert _metric(after, gen) - _metric(before, gen) == 12
    assert _metric(after, "specserve_prompt_tokens_total") > _metric(before, "specserve_prompt_tokens_total")
    assert _metric(after, "specserve_spec_decode_draft_tokens_total") > 0  # counters mirrored from the core
    assert _metric(after, "specserve_ready") == 1.0


def test_response_format_crosses_the_boundary(proc):
    out = proc.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "json please"}], max_tokens=60, temperature=0,
        response_format={"type": "json_object"})
    content = out.choices[0].message.content
    assert content.lstrip().startswith("{")
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_bad_input_is_a_400_from_the_api_process(proc):
    with pytest.raises(openai.BadRequestError) as exc:
        proc.client().completions.create(model=MODEL, prompt="hi", max_tokens=100000)
    assert exc.value.code == "context_length_exceeded"


def test_sigterm_drains_and_leaves_no_engine_process(tiny_pair):
    p = ServerProcess("--model", tiny_pair[0], "--speculative-method", "ngram", "--served-model-name", MODEL,
                      "--dtype", "float32", "--max-model-len", "512", "--engine-process",
                      env={"OMP_NUM_THREADS": "1"}).start()
    core_pid = p.health()[1]["engine_pid"]
    result: dict = {}

    def call() -> None:
        try:
            r = p.client().completions.create(model=MODEL, prompt="def f(x):", max_tokens=400, temperature=0,
                                              extra_body={"ignore_eos": True})
            result["tokens"] = r.usage.completion_tokens
        except Exception as e:  # noqa: BLE001 - recorded for the assertion
            result["error"] = repr(e)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)  # the request is running
    rc = p.stop()
    t.join(30)
    assert result.get("tokens") == 400, result
    assert rc == 0
    for _ in range(50):
        try:
            os.kill(core_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"engine process {core_pid} outlived the server")
