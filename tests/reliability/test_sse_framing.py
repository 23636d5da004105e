"""Generated text may hold any character; each SSE event must still be one line to every line splitter (the soak run
lost streams when a tiny model emitted U+0085 and httpx's iter_lines cut the `data:` line there)."""

from __future__ import annotations

import json

import pytest

from server.serving_common import sse


@pytest.mark.parametrize("ch", ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"])
def test_event_is_one_line_for_splitlines(ch):
    data = {"choices": [{"delta": {"content": f"a{ch}b"}}]}
    event = sse(data)
    assert event.endswith("\n\n")
    lines = event[:-2].splitlines()  # what httpx's iter_lines does
    assert len(lines) == 1 and json.loads(lines[0][len("data: "):]) == data
