"""Why a choice ended, as the server speaks of it: OpenAI's `finish_reason` values plus the two endings that never reach
a client as a finish reason (`abort` and `error` become an HTTP error or an SSE error event, server.serving_common).

The engine reports its reason as a bare string (`RequestOutput.finish_reason`: "stop", "length", "abort", "error");
the server turns it into a `FinishReason` once, where it reads an output (`FinishReason.of`), and compares and labels
enum members from there on. A str Enum, so `json.dumps` writes the same strings clients have always seen.
"""

from __future__ import annotations

import enum

from engine.outputs import RequestOutput


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS or a stop string/token
    LENGTH = "length"  # max_tokens or the context length
    TOOL_CALLS = "tool_calls"  # STOP on a reply the server read as tool calls (server-side only)
    ABORT = "abort"  # the server ended it: disconnect, deadline, drain
    ERROR = "error"  # a fault inside the engine (or its process died)

    # "stop", not "FinishReason.STOP", in f-strings, log lines and Prometheus labels (str() of a mixed-in Enum
    # member is its qualified name since Python 3.11).
    __str__ = str.__str__

    @classmethod
    def of(cls, out: RequestOutput) -> FinishReason | None:
        """The reason of a finished output, None while the choice runs. An unknown engine string is an ERROR (a
        choice must not end as a success the server cannot name)."""
        if not out.finished:
            return None
        try:
            return cls(out.finish_reason)
        except ValueError:
            return cls.ERROR

    @property
    def succeeded(self) -> bool:
        """The choice finished normally (request_success_total), as opposed to ending without finishing."""
        return self in (FinishReason.STOP, FinishReason.LENGTH, FinishReason.TOOL_CALLS)
