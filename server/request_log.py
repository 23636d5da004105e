"""One structured log line per request (logger `specserve.requests`), emitted when the response is complete.

Fields: id, endpoint, status (499 = the client disconnected), stream, n, prompt_tokens, completion_tokens, ttft_ms,
duration_ms, draft_tokens, accepted_tokens, acceptance (accepted/draft), finish_reason, error. The prompt text is
logged only with `server.log_prompts`.

Listeners (`ServerState.listeners`, e.g. a Prometheus exporter) get `on_output(record, output)` for every engine
output the server consumes and `on_finish(record)` once, with the final status, when the request is over.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from engine.outputs import RequestOutput
from server.finish_reason import FinishReason

log = logging.getLogger("specserve.requests")


@dataclass
class RequestRecord:
    request_id: str
    endpoint: str
    stream: bool = False
    n: int = 1
    start: float = field(default_factory=time.monotonic)
    status: int = 200
    prompt_tokens: int = 0
    first_token: float | None = None
    finish_reasons: list[FinishReason] = field(default_factory=list)
    error: str | None = None
    prompt: Any = None  # set only when log_prompts is on
    listeners: list[Any] = field(default_factory=list, repr=False)  # see ServerState.listeners
    _emitted: bool = False
    # (engine request id, choice index) -> latest cumulative (output tokens, draft tokens, accepted tokens); counts
    # what was generated also when a choice never finished (disconnect, deadline).
    _choices: dict[tuple[str, int], tuple[int, int, int]] = field(default_factory=dict, repr=False)

    def observe(self, out: RequestOutput) -> None:
        """Note one engine output (any choice)."""
        for listener in self.listeners:
            if hasattr(listener, "on_output"):
                try:
                    listener.on_output(self, out)
                except Exception:  # a metrics bug must not break a response
                    log.exception("request listener failed")
        if self.first_token is None and out.token_ids:
            self.first_token = time.monotonic()
        self._choices[(out.request_id, out.index)] = (out.num_output_tokens, out.spec.draft_tokens,
                                                       out.spec.accepted_tokens)
        reason = FinishReason.of(out)
        if reason is not None and out.finish_reason:
            self.finish_reasons.append(reason)

    @property
    def completion_tokens(self) -> int:
        return sum(c[0] for c in self._choices.values())

    @property
    def draft_tokens(self) -> int:
        return sum(c[1] for c in self._choices.values())

    @property
    def accepted_tokens(self) -> int:
        return sum(c[2] for c in self._choices.values())

    def fail(self, status: int, message: str) -> None:
        self.status = status
        self.error = message

    def as_dict(self) -> dict[str, Any]:
        now = time.monotonic()
        d: dict[str, Any] = {
            "event": "request",
            "id": self.request_id,
            "endpoint": self.endpoint,
            "status": self.status,
            "stream": self.stream,
            "n": self.n,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": None if self.first_token is None else round((self.first_token - self.start) * 1000, 1),
            "duration_ms": round((now - self.start) * 1000, 1),
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance": round(self.accepted_tokens / self.draft_tokens, 4) if self.draft_tokens else None,
            "finish_reason": ",".join(sorted({r.value for r in self.finish_reasons})) or None,
        }
        if self.error is not None:
            d["error"] = self.error
        if self.prompt is not None:
            d["prompt"] = self.prompt
        return d

    @property
    def emitted(self) -> bool:
        return self._emitted

    def emit(self) -> None:
        """Write the line once (later calls do nothing)."""
        if self._emitted:
            return
        self._emitted = True
        log.info(json.dumps(self.as_dict(), ensure_ascii=False))
        for listener in self.listeners:
            if hasattr(listener, "on_finish"):
                try:
                    listener.on_finish(self)
                except Exception:  # a metrics bug must not break a response
                    log.exception("request listener failed")
