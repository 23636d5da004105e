"""Request models -> SamplingParams, refusals of unsupported fields, SSE framing, error mapping. No server."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from engine.errors import (
    EngineStoppedError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    RequestFailedError,
    RunnerError,
)
from engine.sampling.params import SamplingParams
from server.errors import (
    BadRequestError,
    ModelNotFoundError,
    RequestTimeoutError,
    describe,
    sse_error_event,
    validation_error_from_pydantic,
)
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.serving_common import sse

MSGS = [{"role": "user", "content": "hi"}]


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, **kw})


def test_chat_defaults_map_to_openai_defaults():
    p = chat().to_sampling_params()
    assert p == SamplingParams(n=1, max_tokens=None, temperature=1.0, top_p=1.0, logprobs=None, speculative=True)


def test_chat_every_field_maps():
    p = chat(n=2, max_tokens=9, temperature=0.5, top_p=0.9, seed=7, stop="END", presence_penalty=0.1,
             frequency_penalty=0.2, logit_bias={"5": -100, "6": 2.5}, logprobs=True, top_logprobs=3, top_k=40,
             min_p=0.05, repetition_penalty=1.1, min_tokens=2, ignore_eos=True, stop_token_ids=[9],
             speculative=False, user="u").to_sampling_params()
    assert p == SamplingParams(n=2, max_tokens=9, min_tokens=2, temperature=0.5, top_p=0.9, top_k=40, min_p=0.05,
                               presence_penalty=0.1, frequency_penalty=0.2, repetition_penalty=1.1,
                               logit_bias={5: -100.0, 6: 2.5}, seed=7, stop=["END"], stop_token_ids=[9],
                               ignore_eos=True, logprobs=3, speculative=False)


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=5, max_completion_tokens=8).to_sampling_params().max_tokens == 8
    assert chat(logprobs=True).to_sampling_params().logprobs == 0
    assert chat(stop=["a", "b"]).to_sampling_params().stop == ["a", "b"]


def test_unknown_fields_ignored():
    assert chat(some_new_openai_field={"x": 1}, parallel_tool_calls=False).n == 1


@pytest.mark.parametrize("kw,param", [
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"top_logprobs": 2}, "top_logprobs"),
])
def test_chat_refusals(kw, param):
    with pytest.raises(BadRequestError) as e:
        chat(**kw).check_supported()
    assert e.value.param == param


def test_chat_accepts_text_response_format_and_none_tool_choice():
    chat(response_format={"type": "text"}, tool_choice="none").check_supported()


def test_chat_messages_content_forms():
    req = chat(messages=[{"role": "developer", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                         {"role": "assistant", "content": "ok"}])
    assert req.chat_messages() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"},
                                   {"role": "assistant", "content": "ok"}]
    with pytest.raises(BadRequestError, match="only text"):
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]).chat_messages()
    with pytest.raises(BadRequestError):
        chat(messages=[{"role": "function", "content": "x"}]).chat_messages()


def test_logit_bias_keys_must_be_ints():
    with pytest.raises(BadRequestError) as e:
        chat(logit_bias={"hello": 1}).to_sampling_params()
    assert e.value.param == "logit_bias"


@pytest.mark.parametrize("prompt,expected", [
    ("hi", ["hi"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]]),
])
def test_completion_prompt_forms(prompt, expected):
    req = CompletionRequest.model_validate({"model": "m", "prompt": prompt})
    assert req.prompts() == expected
    assert req.to_sampling_params().max_tokens == 16  # OpenAI's completions default


@pytest.mark.parametrize("prompt", [["a", 1], [[1], "a"], [True], {"a": 1}, 3, None])
def test_completion_bad_prompt_shapes(prompt):
    with pytest.raises(ValidationError) as e:
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})
    err = validation_error_from_pydantic(e.value)
    assert err.param == "prompt" and err.status == 400


def test_completion_refusals():
    for kw, param in (({"suffix": "s"}, "suffix"), ({"echo": True, "logprobs": 1}, "echo"),
                      ({"best_of": 3}, "best_of")):
        with pytest.raises(BadRequestError) as e:
            CompletionRequest.model_validate({"model": "m", "prompt": "x", **kw}).check_supported()
        assert e.value.param == param


def test_validation_error_names_field():
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, "temperature": "hot"})
    err = validation_error_from_pydantic(e.value)
    assert err.param == "temperature" and "temperature" in err.message and err.status == 400


@pytest.mark.parametrize("exc,status,type_,code", [
    (InvalidRequestError("x", field="n"), 400, "invalid_request_error", "invalid_request"),
    (PromptTooLongError("x"), 400, "invalid_request_error", "context_length_exceeded"),
    (QueueFullError("x"), 429, "rate_limit_error", "queue_full"),
    (EngineStoppedError("x"), 503, "service_unavailable_error", "engine_unavailable"),
    (RequestFailedError("x"), 500, "server_error", "request_failed"),
    (RunnerError("x"), 500, "server_error", "runner_failed"),
    (ModelNotFoundError("x", param="model"), 404, "invalid_request_error", "model_not_found"),
    (RequestTimeoutError("x"), 504, "server_error", "request_timeout"),
    (KeyError("secret detail"), 500, "server_error", "internal_error"),
])
def test_error_mapping(exc, status, type_, code):
    got_status, body, headers = describe(exc)
    assert got_status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_ and body["error"]["code"] == code
    if status == 429:
        assert headers["Retry-After"] == "1"
    if status == 500:
        assert "secret" not in body["error"]["message"] or code != "internal_error"


def test_sse_framing():
    assert sse({"a": "é"}) == 'data: {"a":"é"}\n\n'
    ev = sse_error_event(QueueFullError("busy"))
    assert ev.startswith("data: ") and ev.endswith("\n\n")
    assert json.loads(ev[6:])["error"] == {"message": "busy", "type": "rate_limit_error", "param": None,
                                           "code": "queue_full", "status": 429}
