"""Continuous-batching scheduler: which sequences run this step, their prefill chunks, and their draft budget.

FCFS. Every step: first the decoding sequences (each takes 1 token plus the K draft tokens the speculation policy grants
it), then running sequences still in prefill, then waiting sequences admitted into free slots, all under one per-step
token budget — so a long prompt is prefilled in chunks and never stalls running streams. Drafts are cut by what is
left of the budget, in running-list order; that changes no sequence's text (greedy rows are batch-invariant argmaxes,
seeded sampled rows keyed Gumbel-max samples that ignore K: `Sequence.coupled`).

After the step, `update` is the other half: computed counters move (a rejected draft is one subtraction), emitted
tokens are appended up to the first stop, and finished sequences give their slot back. Every slot is freed in
`finish`, the one place that calls the engine's `release` hook (runner and draft state of that slot).

The scheduler never touches tensors; it hands out counters and slot ids.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.sequence import Finish, Sequence, SequenceStatus

if TYPE_CHECKING:
    from engine.select import Selection

# (decoding sequences, token budget left for their drafts) -> max draft tokens per sequence.
KPolicy = Callable[[list[Sequence], int], list[int]]
# (sequence, its selection, index j of the token just appended) -> why the sequence stops at that token, or None.
TokenCheck = Callable[[Sequence, "Selection", int], Finish | None]


def no_speculation(seqs: list[Sequence], budget: int) -> list[int]:
    return [0] * len(seqs)


@dataclass
class ScheduledRow:
    seq: Sequence
    num_new: int  # uncomputed tokens this row runs (prefill chunk length, or 1 for a decoding sequence)
    max_draft: int  # draft tokens the proposer may add after them (0 for prefill rows)
    is_last_chunk: bool  # the row reaches the end of the known tokens, so it needs logits

    @property
    def is_prefill(self) -> bool:
        return self.seq.in_prefill


@dataclass
class SchedulerOutput:
    rows: list[ScheduledRow]

    @property
    def sampled(self) -> list[ScheduledRow]:
        """Rows that get logits and emit tokens (decode rows and last prefill chunks), in row order."""
        return [r for r in self.rows if r.is_last_chunk]

    @property
    def seqs(self) -> list[Sequence]:
        return [r.seq for r in self.rows]


def _keep(seq: Sequence) -> None:
    pass


class Scheduler:
    def __init__(self, max_num_seqs: int, max_queue: int, max_num_batched_tokens: int,
                 release: Callable[[Sequence], None] = _keep):
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_num_seqs ({max_num_seqs}) "
                "so every running sequence can decode each step"
            )
        self.max_num_seqs = max_num_seqs
        self.max_queue = max_queue
        self.budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(max_num_seqs - 1, -1, -1))  # pop() hands out slot 0 first
        self.release = release  # frees a slot's backend state (runner, draft cache); called while seq.slot names it
        self.finished: list[Sequence] = []  # finished since the engine last collected outputs (`take_finished`)

    # -- admission -------------------------------------------------------------------------------------------------

    @property
    def num_in_flight(self) -> int:
        return len(self.waiting) + len(self.running)

    def has_capacity(self, n: int) -> bool:
        """Room for `n` more sequences: every slot plus the waiting queue."""
        return self.num_in_flight + n <= self.max_num_seqs + self.max_queue

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step --------------------------------------------------------------------------------------------------

    def schedule(self, k_policy: KPolicy = no_speculation) -> SchedulerOutput:
        budget = self.budget
        rows: list[ScheduledRow] = []

        decoding = [s for s in self.running if not s.in_prefill]
        budget -= len(decoding)
        ks = k_policy(decoding, budget) if decoding else []
        # Drafts past the sequence's last allowed position would be wasted (and could overflow the slot).
        for seq, k in zip(decoding, ks, strict=True):
            k = max(0, min(k, seq.max_total_len - seq.num_tokens - 1, budget))
            budget -= k
            rows.append(ScheduledRow(seq, num_new=1, max_draft=k, is_last_chunk=True))

        for seq in self.running:
            if budget <= 0:
                break
            if seq.in_prefill:
                rows.append(self._prefill_row(seq, budget))
                budget -= rows[-1].num_new

        while budget > 0 and self.waiting and self.free_slots:
            seq = self.waiting.popleft()
            seq.slot = self.free_slots.pop()
            seq.status = SequenceStatus.RUNNING
            seq.first_scheduled_time = time.monotonic()
            self.running.append(seq)
            rows.append(self._prefill_row(seq, budget))
            budget -= rows[-1].num_new
        return SchedulerOutput(rows)

    def pending_prefill(self) -> int:
        """Prompt tokens waiting to be prefilled by running sequences and by those the free slots would admit: what
        the next step prefills, up to the budget its decode rows leave (the policy prices a step with it)."""
        admitted = [self.waiting[i] for i in range(min(len(self.waiting), len(self.free_slots)))]
        return sum(s.num_uncomputed for s in self.running if s.in_prefill) + sum(s.num_uncomputed for s in admitted)

    @staticmethod
    def _prefill_row(seq: Sequence, budget: int) -> ScheduledRow:
        n = min(seq.num_uncomputed, budget)
        return ScheduledRow(seq, num_new=n, max_draft=0, is_last_chunk=seq.num_computed + n == seq.num_tokens)

    # -- after the step --------------------------------------------------------------------------------------------

    def update(self, sched: SchedulerOutput, selections: list[Selection | None], check: TokenCheck) -> list[int]:
        """Apply one step's result; `selections` are parallel to `sched.sampled` (None: the row failed and finished).

        Every row's new tokens are now computed; a verify row also keeps the K/V of its accepted drafts (positions past
        them hold rejected drafts and are overwritten later: rollback is not counting them). Emitted tokens are
        appended one by one and `check` says where the sequence stops: the rest of the run is thrown away. Returns the
        tokens each sampled row delivered.
        """
        for r in sched.rows:
            r.seq.num_computed += r.num_new
        delivered = []
        for r, sel in zip(sched.sampled, selections, strict=True):
            seq = r.seq
            n_out = len(seq.output_ids)
            if sel is not None:
                seq.spec.target_passes += 1
                seq.num_computed += sel.num_accepted
                for j, tok in enumerate(sel.token_ids if not seq.is_finished else ()):
                    seq.output_ids.append(tok)
                    stop = check(seq, sel, j)
                    if stop is not None:
                        self.finish(seq, stop.reason, stop.stop_reason, stop.error)
                        break
                # "Accepted" in usage, metrics and the realized rate means accepted *and delivered*.
                seq.spec.accepted_tokens += min(sel.num_accepted, len(seq.output_ids) - n_out)
            delivered.append(len(seq.output_ids) - n_out)
        return delivered

    # -- retirement ------------------------------------------------------------------------------------------------

    def finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None,
               error: str | None = None) -> None:
        """Mark finished and free its slot: backend state first (`release`), then back to the pool (the next step may
        hand it out). The sequence is reported once by the next `take_finished`."""
        if seq.is_finished:
            return
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
        seq.error = error
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.slot is not None:
            self.release(seq)
            self.free_slots.append(seq.slot)
            seq.slot = None
        self.finished.append(seq)

    def abort(self, request_id: str) -> None:
        for seq in self.find(request_id):
            self.finish(seq, "abort")

    def take_finished(self) -> list[Sequence]:
        out, self.finished = self.finished, []
        return out

    def find(self, request_id: str) -> list[Sequence]:
        return [s for s in (*self.running, *self.waiting) if s.request_id == request_id]
