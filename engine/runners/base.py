"""The runner protocol: the one seam between the engine (counters, queues) and a backend (tensors, devices).

A step is one `execute(ForwardBatch)` call. Each row of the batch names a KV slot, the new tokens to run for that slot
(a prefill chunk, one decode token, or the last token followed by K draft tokens for verification) and the position of
the first new token. The runner writes their K/V into the slot at those positions (overwriting whatever a rejected draft
left there: rollback is the engine moving its counter back) and returns logits for the last `num_logits` tokens of
each row.

Everything backend-specific (padding to static shapes, buckets, compiled K values, device placement, and which
requests it can serve at all: `check_request`) stays inside the runner; the engine never asks which backend it drives.
Runners subclass `Runner` to inherit the defaults (`warmup`, `check_request`, `release_slot` do nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from engine.sampling.params import SamplingParams


@dataclass(frozen=True)
class RunnerInfo:
    vocab_size: int
    max_slots: int  # KV slots == the most sequences that can run at once
    max_model_len: int  # positions per slot
    allowed_k: tuple[int, ...] | None = None  # draft lengths a verify row may carry; None = any
    max_chunk_tokens: int | None = None  # most new tokens one row may carry in a call (largest bucket); None = any
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "torch"
    buckets: tuple[int, ...] = ()


@dataclass
class ForwardBatch:
    """One step's work. Lists are parallel, one entry per row; rows name distinct slots.

    slot_ids[i]       KV slot of row i
    token_ids[i]      new tokens of row i (len >= 1)
    start_pos[i]      position of token_ids[i][0]; earlier positions of that slot are already in the cache
    num_logits[i]     how many logits row i needs, taken from its last tokens (0 = none, e.g. a mid-prompt chunk)
    """

    slot_ids: list[int]
    token_ids: list[list[int]]
    start_pos: list[int]
    num_logits: list[int]

    def __post_init__(self) -> None:
        n = len(self.slot_ids)
        if not (len(self.token_ids) == len(self.start_pos) == len(self.num_logits) == n):
            raise ValueError("ForwardBatch lists must have one entry per row")

    @property
    def num_rows(self) -> int:
        return len(self.slot_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    @property
    def total_logits(self) -> int:
        return sum(self.num_logits)


@runtime_checkable
class Runner(Protocol):
    """A model bound to a device and a static slot KV cache `[layers, slots, kv_heads, max_len, head_dim]`."""

    def info(self) -> RunnerInfo: ...

    def warmup(self) -> None:  # noqa: B027  (a default, not abstract)
        """Run representative shapes once so the first request does not pay compilation/allocation."""

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        """Run the batch; return float32 logits `[batch.total_logits, vocab]` on CPU or device, rows in batch order."""
        ...

    def check_request(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:  # noqa: B027
        """Raise an engine error (naming the field) if this backend cannot serve the request: a prompt past the
        largest compiled bucket, sampling a fused device graph cannot do. Called once, at admission."""

    def release_slot(self, slot: int) -> None:  # noqa: B027
        """The engine no longer uses `slot` (finished or aborted). Torch: nothing to do; Neuron may track live slots."""
