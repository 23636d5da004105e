"""LangChain (`with_structured_output`, `bind_tools`) and litellm (response_format, tools) against a live server."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm would fetch its price list at import
import langchain_openai  # noqa: E402 - both are test extras (pyproject), imported after the environment is set
import litellm  # noqa: E402

from tests.server.conftest import API_KEY, MODEL
from tests.server.test_structured_api import ASK, GET_WEATHER, SCHEMA, Weather


@pytest.fixture(scope="module")
def chat_model(server):
    return langchain_openai.ChatOpenAI(base_url=server.v1, api_key=API_KEY, model=MODEL, temperature=0,
                                       max_tokens=150, max_retries=0, timeout=120)


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(chat_model, method):
    if method == "json_mode":  # the schema is not sent: the model only promises a JSON object
        out = chat_model.with_structured_output(None, method="json_mode").invoke(ASK)
        assert isinstance(out, dict)
        return
    # strict: additionalProperties false, else a random tiny model adds keys until max_tokens
    out = chat_model.with_structured_output(Weather, method=method, strict=True).invoke(ASK)
    assert isinstance(out, Weather)


def test_langchain_bind_tools(chat_model):
    msg = chat_model.bind_tools([GET_WEATHER], tool_choice="get_weather").invoke(ASK)
    (call,) = msg.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    jsonschema.validate(call["args"], GET_WEATHER["function"]["parameters"])
    streamed = None
    for chunk in chat_model.bind_tools([GET_WEATHER], tool_choice="required").stream(ASK):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_calls and streamed.tool_calls[0]["name"] == "get_weather"


@pytest.fixture(scope="module")
def litellm_call(server):
    def call(**kw):
        return litellm.completion(model=f"openai/{MODEL}", api_base=server.v1, api_key=API_KEY, messages=ASK,
                                  temperature=0, max_tokens=150, num_retries=0, **kw)

    return call


def test_litellm_response_format_and_tools(litellm_call):
    r = litellm_call(response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA,
                                                                             "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    r = litellm_call(tools=[GET_WEATHER], tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), GET_WEATHER["function"]["parameters"])
