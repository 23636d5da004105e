"""Structured output and tool calling through the official OpenAI SDK against a live `specserve serve` (tiny pair,
draft-model speculation at a static K): parse() with a Pydantic model, json_schema on both endpoints, greedy output
identical with and without speculation, tool_choice required / named / auto, streamed tool calls reassembled by the
SDK, tool results accepted on the next turn, metrics."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from bench.datasets import load_dataset
from tests.server.conftest import API_KEY, MODEL


class Weather(BaseModel):  # bounded fields: a random tiny model finishes the document well inside max_tokens
    city: Literal["Paris", "Oslo", "Lima"]
    celsius: int = Field(ge=-40, le=50)
    rain: bool
    note: str = Field(max_length=6)


SCHEMA = {**Weather.model_json_schema(), "additionalProperties": False}  # as parse() sends it (strict)
GET_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"enum": ["Paris", "Oslo"]}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer", "minimum": 1,
                                                                                  "maximum": 7}},
        "required": ["city", "unit", "days"], "additionalProperties": False}}}
GET_TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 5}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}


def bundled_prompts(n: int) -> list[list[dict]]:
    return [rec["messages"] for rec in load_dataset("chat")[:n]]


def test_parse_with_a_pydantic_model(client):
    done = client.chat.completions.parse(model=MODEL, messages=ASK, response_format=Weather, temperature=0,
                                         max_tokens=120)
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Weather)
    spec = done.usage.model_extra["speculation"]
    assert spec["forced_tokens"] > 0 and spec["forced_tokens"] <= spec["accepted_tokens"]


@pytest.mark.parametrize("speculative", [True, False])
def test_every_output_validates_on_the_bundled_prompts(client, speculative):
    for messages in bundled_prompts(4):
        r = client.chat.completions.create(model=MODEL, messages=messages, response_format=FORMAT, max_tokens=120,
                                           temperature=0.8, seed=1, extra_body={"speculative": speculative})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        assert (r.usage.model_extra["speculation"]["draft_tokens"] > 0) == speculative


def test_greedy_under_a_schema_is_identical_with_and_without_speculation(client):
    for messages in bundled_prompts(3):
        texts = [client.chat.completions.create(model=MODEL, messages=messages, response_format=FORMAT,
                                                temperature=0, max_tokens=120,
                                                extra_body={"speculative": s}).choices[0].message.content
                 for s in (True, False)]
        assert texts[0] == texts[1]


def test_completions_endpoint_takes_response_format_and_json_object(client):
    r = client.completions.create(model=MODEL, prompt="Weather:", max_tokens=120, temperature=0,
                                  extra_body={"response_format": FORMAT})
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMA)
    r = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=40, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.choices[0].message.content.startswith("{")


def test_unsupported_schema_feature_is_a_400_naming_it(client):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string"}}, "dependentSchemas": {"a": {"required": ["b"]}}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ASK, response_format=bad, max_tokens=5)
    assert "dependentSchemas" in e.value.message and e.value.param == "response_format"


def test_tool_choice_required_returns_valid_calls(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[GET_WEATHER, GET_TIME],
                                       tool_choice="required", parallel_tool_calls=False, temperature=0.7, seed=3,
                                       max_tokens=150)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    tool = {"get_weather": GET_WEATHER, "get_time": GET_TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_named_tool_call_streams_and_the_sdk_reassembles_it(client):
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[GET_WEATHER, GET_TIME],
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        temperature=0, max_tokens=150) as stream:
        pieces = sum(1 for ev in stream if ev.type == "tool_calls.function.arguments.delta")
        final = stream.get_final_completion()
    assert pieces >= 2  # the arguments arrived incrementally
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), GET_WEATHER["function"]["parameters"])
    # Non-streamed, greedy: the same call.
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[GET_WEATHER, GET_TIME],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       temperature=0, max_tokens=150)
    assert r.choices[0].message.tool_calls[0].function.arguments == call.function.arguments


def test_streamed_required_calls_reassemble(client):
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=[GET_WEATHER], tool_choice="required",
                                        temperature=0, max_tokens=300) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls and all(c.function.name == "get_weather" for c in calls)
    for c in calls:
        jsonschema.validate(json.loads(c.function.arguments), GET_WEATHER["function"]["parameters"])


def test_tool_results_are_accepted_on_the_next_turn(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=[GET_WEATHER],
                                           tool_choice="required", temperature=0, max_tokens=150)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'}]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=[GET_WEATHER], tool_choice="none",
                                       max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None


def test_auto_tool_choice_without_a_call_is_plain_text(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[GET_WEATHER], max_tokens=12, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_metrics_count_constrained_requests_and_compile_time(server, client):
    client.chat.completions.create(model=MODEL, messages=ASK, response_format=FORMAT, max_tokens=120, temperature=0)
    text = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("specserve_") and "{" in line}
    assert values["specserve_structured_requests_total"] >= 1
    assert values["specserve_grammar_compile_seconds_total"] > 0
    assert values["specserve_grammar_compiles_total"] >= 1
    assert values["specserve_spec_decode_forced_tokens_total"] > 0
