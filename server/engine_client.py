"""What the server asks of an engine: the interface `engine.async_engine.AsyncEngine` (engine on a thread) and
`engine.process_engine.ProcessEngine` (engine in its own process) share, and the test fakes implement.

A Protocol, so the engine classes need not import the server; their modules are imported only for the type checker
(importing them loads torch, which the server defers until the model loads). Optional extras, read with getattr where
used because the test fakes lack them: `add_output_listener(fn)` and `counters` (server.metrics), `restarts` and
`pid` (the engine-core process, server.state's /health).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.async_engine import EngineStats, RequestStream
    from engine.sampling.params import SamplingParams


class EngineClient(Protocol):
    model_name: str  # the served model name (`model` in requests and responses)
    max_model_len: int
    vocab_size: int
    tokenizer: Any  # a transformers tokenizer: chat template, encode/decode

    def start(self) -> None:
        """Start stepping (the thread or the core process)."""

    async def drain(self, timeout: float) -> None:
        """Admit nothing new; wait up to `timeout` s for in-flight requests, then abort the rest."""

    def shutdown(self) -> None: ...

    def stats(self) -> EngineStats:
        """Slots, queue and health, read without waiting for a step."""

    def add_request(self, prompt_ids: list[int], params: SamplingParams,
                    request_id: str | None = None) -> RequestStream:
        """Admit one request (raises an engine error when it is refused); its outputs arrive on the stream."""
