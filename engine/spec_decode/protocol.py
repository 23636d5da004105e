"""`SpecPolicy`: what the engine asks of a speculation policy (engine.spec_decode.policy has the implementations).

Per step the engine calls `choose_k` before it schedules, `record_verify` for each verified row, and `observe` once the
step is measured; every estimate a policy needs (acceptance, proposer supply, step times) is the policy's to keep.
"""

from __future__ import annotations

from typing import Protocol

from engine.sequence import Sequence
from engine.stats import StepRecord


class SpecPolicy(Protocol):
    def choose_k(self, seqs: list[Sequence], budget: int, prefill_tokens: int = 0) -> list[int]:
        """Most draft tokens per decoding sequence this step, within `budget` draft tokens; `prefill_tokens` are the
        prompt tokens the step also runs (the policy prices the whole step)."""
        ...

    def record_verify(self, seq: Sequence, num_draft: int, num_accepted: int) -> None:
        """The target verified `num_draft` of the proposer's drafts for `seq` and accepted `num_accepted` (drafts a
        grammar forced are not reported: they say nothing about the proposer)."""
        ...

    def observe(self, rec: StepRecord) -> None:
        """One finished step, as measured."""
        ...
