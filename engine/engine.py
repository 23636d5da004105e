"""The synchronous engine: one `step()` = schedule -> propose -> runner.execute -> select tokens -> update.

It owns the scheduler, the target runner, the optional proposer and speculation policy, and the tokenizer for
incremental detokenization. It is driven by one thread (`engine.async_engine`); nothing here is thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from engine.detokenizer import IncrementalDetokenizer
from engine.errors import InvalidRequestError, PromptTooLongError, QueueFullError
from engine.outputs import RequestOutput
from engine.runners.base import ForwardBatch, Runner
from engine.sampling.params import SamplingParams
from engine.sampling.sampler import choice_generator
from engine.scheduler import ScheduledRow, Scheduler, no_speculation
from engine.select import Selection, select_tokens
from engine.sequence import Sequence
from engine.spec.base import Proposer
from engine.spec.policy import record_verify
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
        policy=None,
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
        self.scheduler = Scheduler(limits.max_num_seqs, limits.max_queue, limits.max_num_batched_tokens)
        self.counters = EngineCounters()
        self._detok: dict[Sequence, IncrementalDetokenizer] = {}
        self._finished_pending: list[Sequence] = []  # finished since the last output collection

    # -- requests --------------------------------------------------------------------------------------------------

    def check_request(self, prompt_ids: Seq[int], params: SamplingParams) -> None:
        """Raise a typed error if the request cannot be served; nothing is enqueued."""
        params.validate(self.vocab_size)
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty; send at least one token", param="prompt")
        bad = next((t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < self.vocab_size)), None)
        if bad is not None:
            raise InvalidRequestError(
                f"prompt token id {bad!r} is outside the vocabulary (0..{self.vocab_size - 1})", param="prompt"
            )
        limit = self.limits.max_model_len
        n = len(prompt_ids)
        if n >= limit:
            raise PromptTooLongError(
                f"This model's maximum context length is {limit} tokens; the prompt has {n} tokens "
                f"(it must leave room for at least one generated token).",
                param="messages",
            )
        if params.max_tokens is not None and n + params.max_tokens > limit:
            raise PromptTooLongError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n + params.max_tokens} tokens ({n} in the prompt, {params.max_tokens} in the completion). "
                f"Reduce the prompt or max_tokens.",
                param="max_tokens",
            )
        # Backend limits (largest compiled bucket, fused on-device sampling) are the runner's to state.
        runner_check = getattr(self.runner, "check_request", None)
        if runner_check is not None:
            runner_check(prompt_ids, params)
        self.structured.check(params)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    arrival_time: float | None = None) -> list[Sequence]:
        """Validate and enqueue one request as `params.n` sequences (one per choice)."""
        self.check_request(prompt_ids, params)
        if not self.scheduler.has_capacity(params.n):
            raise QueueFullError(
                f"server is at capacity ({self.limits.max_num_seqs} running, {self.limits.max_queue} waiting); "
                "retry later"
            )
        arrival = time.monotonic() if arrival_time is None else arrival_time
        max_total = len(prompt_ids) + (params.max_tokens or self.limits.max_model_len)
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_token_ids)
        seqs = []
        for i in range(params.n):
            gen = None if params.seed is None else choice_generator(params.seed, i)
            seq = Sequence(
                seq_id=f"{request_id}-{i}", request_id=request_id, index=i, prompt_ids=list(prompt_ids),
                params=params, max_total_len=min(max_total, self.limits.max_model_len), stop_token_ids=stop_ids,
                generator=gen, arrival_time=arrival,
            )
            self.structured.attach(seq)
            self._detok[seq] = IncrementalDetokenizer(self.tokenizer, prompt_ids, params.stop)
            self.scheduler.add(seq)
            seqs.append(seq)
        self.counters.prompt_tokens += len(prompt_ids) * params.n
        return seqs

    def abort(self, request_id: str) -> None:
        for seq in self.scheduler.find(request_id):
            self._finish(seq, "abort")

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._finished_pending)

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
        spec_on = self.proposer is not None and self.policy is not None
        sched = self.scheduler.schedule(self._choose_k if spec_on else no_speculation)
        if not sched.rows:
            return self._collect([])
        t0 = time.perf_counter()

        draft_probs = self._propose([r for r in sched.rows if r.max_draft > 0])
        rows = sched.rows
        num_prefill_tokens = sum(r.num_new for r in rows if r.is_prefill)
        batch = ForwardBatch(
            slot_ids=[r.seq.slot for r in rows],
            token_ids=[r.seq.uncomputed_ids(r.num_new) + r.seq.draft_ids for r in rows],
            start_pos=[r.seq.num_computed for r in rows],
            num_logits=[len(r.seq.draft_ids) + 1 if r.is_last_chunk else 0 for r in rows],
            live_slots=[s.slot for s in self.scheduler.running],
        )
        try:
            logits = self.runner.execute(batch)  # (total_logits, V)
        except Exception as e:  # a runner failure fails this step's sequences, not the process
            log.exception("runner failed")
            self.counters.runner_errors += 1
            self.counters.last_runner_error = f"{type(e).__name__}: {e}"
            for r in rows:
                self._finish(r.seq, "error", error=f"model runner failed: {type(e).__name__}")
            return self._collect([r.seq for r in rows])

        for r in rows:
            r.seq.num_computed += r.num_new
        sampled = [r for r in rows if r.is_last_chunk]
        drafted = [len(r.seq.draft_ids) for r in sampled]
        selections = self._select(logits, sampled, draft_probs)
        now = time.monotonic()
        delivered = []  # tokens each sampled row delivered: a stop inside an accepted run throws the rest away
        for r, sel in zip(sampled, selections, strict=True):
            n_out = len(r.seq.output_ids)
            if sel is not None:
                self._apply(r.seq, sel, now)
                # "Accepted" in usage, metrics and the realized rate means accepted *and delivered*.
                r.seq.spec.accepted_tokens += min(sel.num_accepted, len(r.seq.output_ids) - n_out)
            delivered.append(len(r.seq.output_ids) - n_out)
        self._record_step(num_prefill_tokens, drafted, selections, delivered, time.perf_counter() - t0)
        return self._collect([r.seq for r in rows])

    def _choose_k(self, seqs: list[Sequence], budget: int) -> list[int]:
        # The policy prices the whole step: these rows and the prompt tokens that will be prefilled beside them.
        ks = self.policy.choose_k(seqs, budget, min(self.scheduler.pending_prefill(), budget))
        return self.structured.forced_k(seqs, ks)  # grammar-forced tokens are drafted whatever K the policy chose

    def _propose(self, rows: list[ScheduledRow]) -> dict[Sequence, torch.Tensor | None]:
        for r in rows:
            r.seq.draft_ids = []
        if not rows or self.proposer is None:
            return {}
        seqs = [r.seq for r in rows]
        try:
            probs = self.proposer.propose(seqs, [r.max_draft for r in rows])
        except Exception as e:  # a draft fault costs this step its drafts (K = 0), not the requests or the engine
            log.exception("draft proposer failed; this step runs without drafts")
            self.counters.draft_errors += 1
            self.counters.last_draft_error = f"{type(e).__name__}: {e}"
            for s in seqs:
                s.draft_ids = []
                self.proposer.on_verified(s, 0)  # roll the draft caches back to the last token the target holds
            return {}
        return dict(zip(seqs, probs, strict=True))

    def _select(self, logits: torch.Tensor, rows: list[ScheduledRow],
                draft_probs: dict[Sequence, torch.Tensor | None]) -> list[Selection | None]:
        """Batched selection; if it raises, retry row by row so one bad request fails alone."""
        seqs = [r.seq for r in rows]
        drafts = [s.draft_ids for s in seqs]
        probs = [draft_probs.get(s) for s in seqs]
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
                self._finish(seq, "error", error=f"sampling failed: {type(e).__name__}: {e}")
                out.append(None)
        return out

    def _apply(self, seq: Sequence, sel: Selection, now: float) -> None:
        """Append the emitted tokens one by one, cutting the run at the first stop; roll back rejected drafts."""
        num_draft = len(seq.draft_ids)
        if num_draft:
            seq.spec.draft_tokens += num_draft
            if not seq.num_forced_drafts:  # forced drafts say nothing about how well the proposer predicts
                record_verify(seq, num_draft, sel.num_accepted)
            if self.proposer is not None:
                self.proposer.on_verified(seq, sel.num_accepted)
        seq.spec.target_passes += 1
        # KV of the accepted drafts is valid; positions past them hold rejected drafts and get overwritten later.
        seq.num_computed += sel.num_accepted
        seq.draft_ids = []
        if seq.grammar is not None and (err := self.structured.on_emitted(seq, sel.token_ids, sel.num_accepted)):
            self._finish(seq, "error", error=err)
            return
        detok = self._detok[seq]
        p = seq.params
        for j, tok in enumerate(sel.token_ids):
            seq.output_ids.append(tok)
            seq.new_token_ids.append(tok)
            seq.new_token_times.append(now)
            if sel.logprobs is not None:
                seq.new_logprobs.append(sel.logprobs[j])
            if seq.first_token_time is None:
                seq.first_token_time = now
            n_out = len(seq.output_ids)
            try:
                stop_str = detok.add_token(tok, check_stop=n_out >= p.min_tokens)
            except Exception as e:
                self._finish(seq, "error", error=f"detokenization failed: {type(e).__name__}: {e}")
                return
            if tok in seq.stop_token_ids and n_out >= p.min_tokens:
                self._finish(seq, "stop", stop_reason=None if tok in self.eos_token_ids else tok)
            elif stop_str is not None:
                self._finish(seq, "stop", stop_reason=stop_str)
            elif seq.num_tokens >= seq.max_total_len:
                self._finish(seq, "length")
            if seq.is_finished:
                return
        seq.new_text += detok.take_delta(final=False)

    def _finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None,
                error: str | None = None) -> None:
        if seq.is_finished:
            return
        if self.proposer is not None:
            self.proposer.release(seq)  # while seq.slot still names the slot
        slot = seq.slot
        self.scheduler.finish(seq, reason, stop_reason)
        seq.error = error
        if slot is not None:
            self.runner.release_slot(slot)
        detok = self._detok.pop(seq, None)
        if detok is not None and reason != "error":
            seq.new_text += detok.take_delta(final=True)
        self.counters.count_finish(reason)
        self._finished_pending.append(seq)

    def _collect(self, seqs: list[Sequence]) -> list[RequestOutput]:
        """One output per sequence with something new; a finished sequence reports its end exactly once."""
        out = []
        for seq in dict.fromkeys(seqs + self._finished_pending):  # dedupe, keep order
            if seq.final_sent:
                continue
            if seq.new_token_ids or seq.new_text or seq.is_finished:
                out.append(self._output(seq))
                seq.final_sent = seq.is_finished
        self._finished_pending = []
        return out

    def _output(self, seq: Sequence) -> RequestOutput:
        ids, text, lps, times = seq.take_delta()
        return RequestOutput(
            request_id=seq.request_id, index=seq.index, token_ids=ids, text=text,
            logprobs=lps if seq.params.logprobs is not None else None, finished=seq.is_finished,
            finish_reason=seq.finish_reason, stop_reason=seq.stop_reason, error=seq.error,
            num_prompt_tokens=len(seq.prompt_ids), num_output_tokens=len(seq.output_ids), token_times=times,
            spec=seq.spec, arrival_time=seq.arrival_time, first_scheduled_time=seq.first_scheduled_time,
            first_token_time=seq.first_token_time,
        )

    def _record_step(self, num_prefill_tokens: int, drafted: list[int], selections: list[Selection | None],
                     delivered: list[int], seconds: float) -> None:
        verified = [s.num_accepted if s is not None else 0 for s in selections]
        rec = StepRecord(
            batch_size=len(drafted),
            num_prefill_tokens=num_prefill_tokens,
            num_draft=drafted,
            num_accepted=[min(a, d) for a, d in zip(verified, delivered, strict=True)],
            emitted_tokens=sum(delivered),
            seconds=seconds,
            num_verified_accepted=verified,
        )
        self.counters.record_step(rec)
        if self.policy is not None:
            self.policy.observe(rec)
