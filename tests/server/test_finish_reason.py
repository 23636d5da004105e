"""FinishReason: the engine's bare strings become enum members at the server's boundary, and JSON, logs and
Prometheus labels still see the plain OpenAI strings."""

from __future__ import annotations

import json

import pytest

from engine.outputs import RequestOutput
from server.finish_reason import FinishReason


def output(reason: str | None, finished: bool = True) -> RequestOutput:
    return RequestOutput(request_id="r", index=0, text="", token_ids=[], finished=finished, finish_reason=reason)


@pytest.mark.parametrize("value", ["stop", "length", "abort", "error"])
def test_engine_strings_map_to_members(value):
    reason = FinishReason.of(output(value))
    assert reason is FinishReason(value)
    assert json.dumps({"finish_reason": reason}) == json.dumps({"finish_reason": value})
    assert str(reason) == f"{reason}" == value  # log lines and metric labels


def test_running_choice_has_no_reason():
    assert FinishReason.of(output(None, finished=False)) is None
    assert FinishReason.of(output("stop", finished=False)) is None


@pytest.mark.parametrize("value", [None, "", "exploded"])
def test_finished_without_a_known_reason_is_an_error(value):
    assert FinishReason.of(output(value)) is FinishReason.ERROR


def test_success_is_stop_length_or_tool_calls():
    assert {r for r in FinishReason if r.succeeded} == {FinishReason.STOP, FinishReason.LENGTH,
                                                         FinishReason.TOOL_CALLS}
