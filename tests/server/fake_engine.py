"""A scripted stand-in for `engine.async_engine.AsyncEngine` (same interface), for in-process tests of what a real
model cannot be made to do on demand: engine failures, unhealthy states, slow loading, exact usage numbers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from engine.outputs import RequestOutput, SpecStats
from engine.sampling.params import SamplingParams


class CharTokenizer:
    """One token per character (ids = code point % vocab); enough of the HF tokenizer API for the server."""

    chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    all_special_tokens: list[str] = []

    def __init__(self, vocab: int = 128):
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % self.vocab for c in text]}

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def convert_ids_to_tokens(self, i: int) -> str:
        return chr(i)

    def apply_chat_template(self, messages, add_generation_prompt: bool, tokenize: bool) -> str:
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


@dataclass
class FakeStats:
    num_running: int = 0
    num_waiting: int = 0
    num_free_slots: int = 4
    num_slots: int = 4
    healthy: bool = True
    error: str | None = None


class FakeStream:
    def __init__(self, request_id: str, items: list, delay: float, engine: FakeEngine):
        self.request_id = request_id
        self._items = list(items)
        self._delay = delay
        self._engine = engine
        self.aborted = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.aborted or not self._items:
            raise StopAsyncIteration
        await asyncio.sleep(self._delay)
        item = self._items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def abort(self) -> None:
        self.aborted = True
        self._engine.aborted.append(self.request_id)


def text_outputs(rid: str, params: SamplingParams, prompt_len: int, text: str = "abc",
                 spec: SpecStats | None = None) -> list[RequestOutput]:
    """Each choice emits `text` one character per output, then finishes with 'length'."""
    outs = []
    for k in range(params.n):
        for j, ch in enumerate(text):
            last = j == len(text) - 1
            outs.append(RequestOutput(
                request_id=rid, index=k, token_ids=[ord(ch)], text=ch, finished=last,
                finish_reason="length" if last else None, num_prompt_tokens=prompt_len, num_output_tokens=j + 1,
                spec=spec or SpecStats()))
    return outs


class FakeEngine:
    model_name = "fake"
    max_model_len = 64
    vocab_size = 128

    def __init__(self, script: Callable[[str, list[int], SamplingParams], list] | None = None, delay: float = 0.0):
        self.tokenizer = CharTokenizer(self.vocab_size)
        self.script = script or (lambda rid, ids, p: text_outputs(rid, p, len(ids)))
        self.delay = delay
        self.started = False
        self.stopped = False
        self.draining = False
        self.aborted: list[str] = []
        self.fake_stats = FakeStats()

    def start(self) -> None:
        self.started = True

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str | None = None) -> FakeStream:
        params.validate(self.vocab_size)
        rid = request_id or "req"
        return FakeStream(rid, self.script(rid, prompt_ids, params), self.delay, self)

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def drain(self, timeout: float) -> None:
        self.draining = True

    def shutdown(self) -> None:
        self.stopped = True

    def stats(self) -> FakeStats:
        return self.fake_stats
