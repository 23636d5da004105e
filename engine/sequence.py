"""One object carries one choice of one request through the pipeline.

The scheduler works only in counters on these objects: `num_computed` is how many of `prompt_ids + output_ids` have
their K/V in the slot. A decoding sequence always has exactly one uncomputed token (the last sampled one); a verify step
runs it plus K draft tokens, and afterwards `num_computed` moves to cover only what was accepted — rollback is a counter.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from engine.outputs import SpecStats, TokenLogprob
from engine.sampling.params import SamplingParams


@dataclass(frozen=True)
class Finish:
    """Why a sequence ends: `reason` is the finish_reason ("stop", "length", "abort", "error"), `stop_reason` the stop
    string or token id that ended it (None for EOS), `error` the message of an "error"."""

    reason: str
    stop_reason: str | int | None = None
    error: str | None = None


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: str
    request_id: str
    index: int  # choice index within the request
    prompt_ids: list[int]
    params: SamplingParams
    max_total_len: int  # prompt + output may not pass this (min of max_model_len and prompt + max_tokens)
    stop_token_ids: frozenset[int]  # EOS (unless ignore_eos) + params.stop_token_ids
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # target KV positions filled with accepted tokens
    draft_num_computed: int = 0  # the same counter for the draft model's slot
    slot: int | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: str | None = None
    final_sent: bool = False  # the finished output has been handed out
    # Speculation (this step's drafts are a value, `engine.spec_decode.base.Drafts`, not state kept here).
    spec: SpecStats = field(default_factory=SpecStats)
    accept_successes: float = 0.0  # recency-weighted accepted drafts (speculation policy's acceptance evidence)
    accept_failures: float = 0.0  # recency-weighted rejections (at most one per verify)
    # Structured output: engine.structured.state.GrammarState over output_ids (None = unconstrained).
    grammar: Any = None
    # Timing (time.monotonic).
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    # Pending delta for the next RequestOutput.
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    new_logprobs: list[TokenLogprob] = field(default_factory=list)
    new_token_times: list[float] = field(default_factory=list)

    @classmethod
    def choices(cls, request_id: str, prompt_ids: list[int], params: SamplingParams, max_model_len: int,
                eos_token_ids: frozenset[int], arrival_time: float) -> list[Sequence]:
        """One sequence per choice of a request (choice `index` keys a seeded request's noise, `Sequence.coupled`)."""
        max_total = min(len(prompt_ids) + (params.max_tokens or max_model_len), max_model_len)
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_token_ids)
        return [cls(seq_id=f"{request_id}-{i}", request_id=request_id, index=i, prompt_ids=list(prompt_ids),
                    params=params, max_total_len=max_total, stop_token_ids=stop_ids,
                    arrival_time=arrival_time)
                for i in range(params.n)]

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def in_prefill(self) -> bool:
        """True until the whole prompt is in the cache (a decoding sequence has exactly one uncomputed token)."""
        return self.num_computed < len(self.prompt_ids)

    @property
    def coupled(self) -> bool:
        """Seeded and sampled: every token it emits is the Gumbel-max sample keyed by (seed, choice `index`, output
        position) (`engine.spec_decode.coupled`), drafts included, so its text depends on neither K, nor batch mates, nor
        whether it speculates at all; it adapts K like any other request."""
        return self.params.seed is not None and not self.params.greedy

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def uncomputed_ids(self, limit: int | None = None) -> list[int]:
        end = self.num_tokens if limit is None else min(self.num_tokens, self.num_computed + limit)
        if self.num_computed < len(self.prompt_ids):
            return self.all_ids[self.num_computed:end]
        return self.output_ids[self.num_computed - len(self.prompt_ids): end - len(self.prompt_ids)]

    def take_delta(self) -> tuple[list[int], str, list[TokenLogprob], list[float]]:
        out = (self.new_token_ids, self.new_text, self.new_logprobs, self.new_token_times)
        self.new_token_ids, self.new_text, self.new_logprobs, self.new_token_times = [], "", [], []
        return out
