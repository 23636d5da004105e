"""Tool-call plans, template-family parsers and the streaming tool-call assembler, without a server."""

from __future__ import annotations

import json

import pytest

from server.errors import BadRequestError
from server.tool_calls import ToolPlan, ToolStreamer, template_messages

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
OTHER = {"type": "function", "function": {"name": "get_time"}}


def plan(choice="auto", parallel=None, template="{{ tools }}<tool_call>"):
    p = ToolPlan.from_request([TOOL, OTHER], choice, parallel)
    p.bind_template(template)
    return p


@pytest.mark.parametrize(("template", "family", "native"), [
    ("{% if tools %}<tool_call>{% endif %}", "hermes", True),
    ("{% if tools %}[TOOL_CALLS]{% endif %}", "mistral", True),
    ("{% if tools %}<|python_tag|>{% endif %}<|eot_id|>", "llama3_json", True),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", "hermes", False),  # no tools: our Hermes rendering
])
def test_family_detection(template, family, native):
    p = plan(template=template)
    assert p.parser.name == family and p.native is native


def test_parsers_read_calls_and_keep_leading_text():
    p = plan()
    content, calls = p.read('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
                            '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    assert content == "Let me check." and [c[0] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0][1]) == {"city": "Oslo"}
    assert plan(parallel=False).read('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>' * 2)[1] == [
        ("get_time", "{}")]
    assert plan().read('<tool_call>{"name": "not_a_tool", "arguments": {}}</tool_call>')[1] == []
    assert plan().read("just text") == ("just text", [])
    m = plan(template="tools [TOOL_CALLS]")
    assert m.read('[TOOL_CALLS][{"name": "get_time", "arguments": {"tz": 1}}]')[1] == [("get_time", '{"tz": 1}')]
    ll = plan(template="tools <|eot_id|>")
    assert ll.read('{"name": "get_weather", "parameters": {"city": "Lima"}}')[1] == [
        ("get_weather", '{"city": "Lima"}')]


def test_required_and_named_grammars():
    req = json.loads(plan("required", parallel=False).grammar().source)
    assert req["maxItems"] == 1 and [b["properties"]["name"]["const"] for b in req["items"]["anyOf"]] == [
        "get_weather", "get_time"]
    named = plan({"type": "function", "function": {"name": "get_weather"}})
    assert json.loads(named.grammar().source) == TOOL["function"]["parameters"]
    assert plan("auto").grammar() is None


@pytest.mark.parametrize(("tools", "choice", "param"), [
    ([{"type": "function"}], "auto", "tools"),
    ([TOOL, TOOL], "auto", "tools"),
    ([TOOL], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ([TOOL], "sometimes", "tool_choice"),
    (None, "required", "tool_choice"),
])
def test_bad_tools_are_400s(tools, choice, param):
    with pytest.raises(BadRequestError) as e:
        ToolPlan.from_request(tools, choice, None)
    assert e.value.param == param


def test_auto_streamer_streams_text_and_holds_a_possible_marker():
    st = ToolStreamer(plan())
    out = st.feed("Hello <tool")  # "<tool" may grow into "<tool_call>": held back
    assert out == [{"content": "Hello "}]
    assert st.feed('_call>{"name": "get_time", ') == []
    assert st.feed('"arguments": {}}</tool_call>') == []
    end = st.finish()
    calls = [d["tool_calls"][0] for d in end if "tool_calls" in d]
    assert calls[0]["function"]["name"] == "get_time" and calls[1]["function"]["arguments"] == "{}"
    assert st.num_calls == 1
    plain = ToolStreamer(plan())
    assert plain.feed("no calls <to") == [{"content": "no calls "}]
    assert plain.finish() == [{"content": "<to"}] and plain.num_calls == 0


def test_named_streamer_streams_arguments():
    st = ToolStreamer(plan({"type": "function", "function": {"name": "get_weather"}}))
    first = st.feed('{"city": ')
    assert first[0]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert first[1]["tool_calls"][0]["function"] == {"arguments": '{"city": '}
    assert st.feed('"Oslo"}') == [{"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}]
    assert st.finish() == []


def test_template_messages_for_a_template_without_tools():
    p = plan(template="{{ messages }}")
    msgs = template_messages([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "content": "12:00", "tool_call_id": "call_1"},
    ], p)
    assert msgs[0]["role"] == "system" and "<tools>" in msgs[0]["content"] and "get_weather" in msgs[0]["content"]
    assert msgs[2]["content"] == '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    assert msgs[3] == {"role": "tool", "content": "<tool_response>\n12:00\n</tool_response>"}
    native = template_messages([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": '{"a": 1}'}}]}], plan())
    assert native[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1} and native[0]["content"] == ""
