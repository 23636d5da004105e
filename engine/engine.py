"""The synchronous engine: one `step()` = schedule -> propose -> execute -> select -> update -> outputs.

Each stage has its own home: `Scheduler.schedule` / `Scheduler.update` (counters, slots), the proposer (drafts), the
runner (logits), `select_tokens` (sampling and rejection sampling), `OutputProcessor` (stop checks, detokenization,
`RequestOutput`s). The engine wires them and isolates faults: a runner failure fails that step's sequences, a
proposer failure costs the step its drafts, a selection failure fails only the request that caused it. It is
driven by one thread (`engine.async_engine`, `engine.core_process`); nothing here is thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from functools import partial

import torch

from engine.admission import Admission
from engine.errors import QueueFullError
from engine.output_processor import OutputProcessor
from engine.outputs import RequestOutput
from engine.runners.base import ForwardBatch, Runner
from engine.sampling.params import RequestLimits, SamplingParams
from engine.scheduler import ScheduledRow, Scheduler, SchedulerOutput, no_speculation
from engine.select import Selection, select_tokens
from engine.sequence import Sequence
from engine.spec_decode.base import NO_DRAFT, Draft, Proposer
from engine.spec_decode.protocol import SpecPolicy
from engine.stats import EngineCounters, StepRecord
from engine.structured.support import StructuredSupport

log = logging.getLogger("specserve.engine")


@dataclass
class EngineLimits:
    max_num_seqs: int
    max_queue: int
    max_num_batched_tokens: int
    max_model_len: int


class LLMEngine:
    def __init__(
        self,
        runner: Runner,
        tokenizer,
        limits: EngineLimits,
        *,
        eos_token_ids: Seq[int] = (),
        proposer: Proposer | None = None,
        policy: SpecPolicy | None = None,
        request_limits: RequestLimits | None = None,
    ):
        info = runner.info()
        if limits.max_num_seqs > info.max_slots:
            raise ValueError(f"max_num_seqs ({limits.max_num_seqs}) exceeds the runner's slots ({info.max_slots})")
        if limits.max_model_len > info.max_model_len:
            raise ValueError(f"max_model_len ({limits.max_model_len}) exceeds the runner's ({info.max_model_len})")
        self.runner = runner
        self.tokenizer = tokenizer
        self.limits = limits
        self.vocab_size = info.vocab_size
        self.eos_token_ids = frozenset(eos_token_ids)
        # grammars (structured output)
        self.structured = StructuredSupport(tokenizer, info.vocab_size, eos_token_ids, info.allowed_k)
        self.proposer = self.structured.wrap_proposer(proposer)
        self.policy = policy
        self.admission = Admission(info.vocab_size, limits.max_model_len, self.structured, request_limits, runner)
        self.scheduler = Scheduler(limits.max_num_seqs, limits.max_queue, limits.max_num_batched_tokens,
                                   release=self._release)
        self.counters = EngineCounters()
        self.output = OutputProcessor(tokenizer, eos_token_ids, self.counters)

    # -- requests --------------------------------------------------------------------------------------------------

    def check_request(self, prompt_ids: Seq[int], params: SamplingParams) -> None:
        """Raise a typed error if the request cannot be served; nothing is enqueued (`engine.admission`)."""
        self.admission.check(prompt_ids, params)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> list[Sequence]:
        """Check, book capacity and enqueue, for direct callers; the async bridges check and book themselves."""
        self.check_request(prompt_ids, params)
        if not self.scheduler.has_capacity(params.n):
            raise QueueFullError(
                f"server is at capacity ({self.limits.max_num_seqs} running, {self.limits.max_queue} waiting); "
                "retry later"
            )
        return self.enqueue(request_id, prompt_ids, params, arrival_time)

    def enqueue(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                arrival_time: float | None = None) -> list[Sequence]:
        """Enqueue a checked request as `params.n` sequences (one per choice)."""
        arrival = time.monotonic() if arrival_time is None else arrival_time
        seqs = Sequence.choices(request_id, prompt_ids, params, self.limits.max_model_len, self.eos_token_ids, arrival)
        for seq in seqs:
            self.structured.attach(seq)
            self.output.add(seq)
            self.scheduler.add(seq)
        self.counters.prompt_tokens += len(prompt_ids) * params.n
        return seqs

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.scheduler.finished)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_free_slots(self) -> int:
        return len(self.scheduler.free_slots)

    # -- one step --------------------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        speculating = self.proposer is not None and self.policy is not None
        sched = self.scheduler.schedule(self._choose_k if speculating else no_speculation)  # schedule
        if not sched.rows:
            return self._outputs([])
        t0 = time.perf_counter()
        drafts = self._propose([r for r in sched.rows if r.max_draft > 0])  # propose
        logits = self._execute(sched.rows, drafts)  # execute: (total_logits, V)
        if logits is None:  # the runner failed, and with it this step's rows
            return self._outputs(sched.seqs)
        sampled = [(r, drafts.get(r.seq, NO_DRAFT)) for r in sched.sampled]  # the rows that got logits
        selections = self._select(logits, sampled)  # select: accepted drafts + one sampled token per row
        for (r, draft), sel in zip(sampled, selections, strict=True):  # update: speculation state, then counters
            if sel is not None:
                self._verified(r.seq, draft, sel)
        delivered = self.scheduler.update(sched, selections, partial(self.output.check_token, now=time.monotonic()))
        self._record(sched, sampled, selections, delivered, time.perf_counter() - t0)
        return self._outputs(sched.seqs)  # outputs

    def _choose_k(self, seqs: list[Sequence], budget: int) -> list[int]:
        # The policy prices the whole step: these rows and the prompt tokens that will be prefilled beside them.
        ks = self.policy.choose_k(seqs, budget, min(self.scheduler.pending_prefill(), budget))
        return self.structured.forced_k(seqs, ks)  # grammar-forced tokens are drafted whatever K the policy chose

    def _propose(self, rows: list[ScheduledRow]) -> dict[Sequence, Draft]:
        if not rows or self.proposer is None:
            return {}
        seqs = [r.seq for r in rows]
        try:
            drafts = self.proposer.propose(seqs, [r.max_draft for r in rows])
        except Exception as e:  # a draft fault costs this step its drafts (K = 0), not the requests or the engine
            log.exception("draft proposer failed; this step runs without drafts")
            self.counters.draft_errors += 1
            self.counters.last_draft_error = f"{type(e).__name__}: {e}"
            for s in seqs:
                self.proposer.on_verified(s, 0)  # roll the draft caches back to the last token the target holds
            return {}
        return dict(zip(seqs, drafts, strict=True))

    def _execute(self, rows: list[ScheduledRow], drafts: dict[Sequence, Draft]) -> torch.Tensor | None:
        ids = [drafts.get(r.seq, NO_DRAFT).token_ids for r in rows]
        batch = ForwardBatch(
            slot_ids=[r.seq.slot for r in rows],
            token_ids=[r.seq.uncomputed_ids(r.num_new) + d for r, d in zip(rows, ids, strict=True)],
            start_pos=[r.seq.num_computed for r in rows],
            num_logits=[len(d) + 1 if r.is_last_chunk else 0 for r, d in zip(rows, ids, strict=True)],
        )
        try:
            return self.runner.execute(batch)
        except Exception as e:  # a runner failure fails this step's sequences, not the process
            log.exception("runner failed")
            self.counters.runner_errors += 1
            self.counters.last_runner_error = f"{type(e).__name__}: {e}"
            for r in rows:
                self.scheduler.finish(r.seq, "error", error=f"model runner failed: {type(e).__name__}")
            return None

    def _select(self, logits: torch.Tensor, rows: list[tuple[ScheduledRow, Draft]]) -> list[Selection | None]:
        """Batched selection; if it raises, retry row by row so one bad request fails alone."""
        seqs = [r.seq for r, _ in rows]
        drafts = [d.token_ids for _, d in rows]
        probs = [d.draft_probs for _, d in rows]
        try:
            return select_tokens(logits, seqs, drafts, probs)
        except Exception:
            log.exception("batched token selection failed; isolating the failing request")
        out: list[Selection | None] = []
        start = 0
        for seq, d, p in zip(seqs, drafts, probs, strict=True):
            block = logits[start:start + len(d) + 1]
            start += len(d) + 1
            try:
                out.append(select_tokens(block, [seq], [d], [p])[0])
            except Exception as e:
                self.scheduler.finish(seq, "error", error=f"sampling failed: {type(e).__name__}: {e}")
                out.append(None)
        return out

    def _verified(self, seq: Sequence, draft: Draft, sel: Selection) -> None:
        """Speculation and grammar bookkeeping of one row, before its tokens are appended (the draft cache rolls
        back from the pre-step length)."""
        num_draft = len(draft.token_ids)
        if num_draft:
            seq.spec.draft_tokens += num_draft
            if not draft.num_forced and self.policy is not None:  # forced drafts say nothing about the proposer
                self.policy.record_verify(seq, num_draft, sel.num_accepted)
            if self.proposer is not None:
                self.proposer.on_verified(seq, sel.num_accepted)
        if seq.grammar is not None and (
                err := self.structured.on_emitted(seq, sel.token_ids, sel.num_accepted, draft.num_forced)):
            self.scheduler.finish(seq, "error", error=err)

    def _record(self, sched: SchedulerOutput, sampled: list[tuple[ScheduledRow, Draft]],
                selections: list[Selection | None], delivered: list[int], seconds: float) -> None:
        rec = StepRecord.measured(sum(r.num_new for r in sched.rows if r.is_prefill),
                                  [len(d.token_ids) for _, d in sampled],
                                  [s.num_accepted if s is not None else 0 for s in selections], delivered, seconds)
        self.counters.record_step(rec)
        if self.policy is not None:
            self.policy.observe(rec)

    def _release(self, seq: Sequence) -> None:
        """The scheduler frees `seq.slot`: drop what the draft cache and the runner keep for it."""
        if self.proposer is not None:
            self.proposer.release(seq)
        self.runner.release_slot(seq.slot)

    def _outputs(self, seqs: list[Sequence]) -> list[RequestOutput]:
        return self.output.collect(seqs + self.scheduler.take_finished())
