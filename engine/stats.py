"""Engine-side counters: what happened in each step, totals since start. The metrics exporter reads these.

Plain integers and lists updated by the engine thread; readers (the metrics scrape) take a snapshot. No labels with
request ids: the engine counts, the server labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class StepRecord:
    """One engine step, as the speculation policy and the metrics see it."""

    batch_size: int  # sequences that produced tokens this step
    num_prefill_tokens: int  # prompt tokens run this step
    num_draft: list[int]  # draft tokens verified, per producing sequence
    num_accepted: list[int]  # of those, accepted and delivered (a stop may throw accepted drafts away), per sequence
    emitted_tokens: int  # tokens delivered this step (delivered accepted drafts + at most one per sequence)
    seconds: float  # wall time of propose + execute + select
    # Accepted by the verifier, before any stop cut: acceptance evidence (a stop is not a rejection). None = as
    # num_accepted.
    num_verified_accepted: list[int] | None = None

    @classmethod
    def measured(cls, num_prefill_tokens: int, num_draft: list[int], num_verified: list[int], delivered: list[int],
                 seconds: float) -> StepRecord:
        """From one step's per-row counts (parallel lists over the rows that got logits): drafts verified, drafts the
        verifier accepted, tokens delivered (a stop inside an accepted run throws the rest away)."""
        return cls(
            batch_size=len(num_draft),
            num_prefill_tokens=num_prefill_tokens,
            num_draft=num_draft,
            num_accepted=[min(a, d) for a, d in zip(num_verified, delivered, strict=True)],
            emitted_tokens=sum(delivered),
            seconds=seconds,
            num_verified_accepted=num_verified,
        )

    @property
    def total_draft(self) -> int:
        return sum(self.num_draft)


@dataclass
class EngineCounters:
    steps: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    spec_steps: int = 0  # steps in which at least one sequence verified drafts
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_pos: Counter = field(default_factory=Counter)  # position (0-based) -> drafts accepted there
    k_chosen: Counter = field(default_factory=Counter)  # draft length -> sequences that verified that many
    batch_sizes: Counter = field(default_factory=Counter)
    finished: Counter = field(default_factory=Counter)  # finish reason -> sequences
    runner_errors: int = 0
    last_runner_error: str | None = None
    draft_errors: int = 0  # steps whose draft proposal failed (they ran without drafts)
    last_draft_error: str | None = None
    # Called with every StepRecord on the engine thread (the metrics' step-time histogram); must be cheap.
    step_observers: list[Callable[[StepRecord], None]] = field(default_factory=list, repr=False, compare=False)

    def record_step(self, rec: StepRecord) -> None:
        for observe in self.step_observers:
            observe(rec)
        self.steps += 1
        self.generation_tokens += rec.emitted_tokens
        if rec.batch_size:
            self.batch_sizes[rec.batch_size] += 1
        if rec.total_draft:
            self.spec_steps += 1
        for k, a in zip(rec.num_draft, rec.num_accepted, strict=True):
            self.k_chosen[k] += 1
            self.draft_tokens += k
            self.accepted_tokens += a
            for pos in range(a):
                self.accepted_per_pos[pos] += 1

    def count_finish(self, reason: str) -> None:
        self.finished[reason] += 1
