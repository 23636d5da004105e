"""Speculation policy: how many draft tokens each decoding sequence gets this step.

Goal: maximise expected generated tokens per second. With per-token acceptance a, a sequence verifying k drafts
emits E(a, k) = (1 - a^(k+1)) / (1 - a) tokens in expectation; a step's wall time comes from `StepCostModel`, fitted
online to every step. For each allowed cap K the policy gives sequence i

    k_i = min(K, largest j with a_i^j >= theta),   theta = (tokens/s at K=0) * (seconds per extra draft token)

(the j-th draft of a sequence is worth verifying only if the tokens it is expected to add, a_i^j, pay for the time it
costs at the current rate), then picks the K whose allocation maximises sum_i E(a_i, k_i) / t(k). The step is priced
whole: t(k) and the rate count every row in it (opted-out rows at K = 0, seeded rows at their fixed K, with their
expected tokens) and the prompt tokens prefilled beside them, so a long step makes drafts relatively cheap and a wide
one makes them dear. K = 0 wins when
drafting does not pay: low acceptance, or large batches where verify tokens cost nearly what decode tokens do. As a
reality check on the fitted model, if recent drafting steps at this batch-size bucket delivered fewer tokens per second
than recent K = 0 steps there (the median of each), K = 0 is chosen.

Acceptance a_i is estimated per sequence from its verifies (accepted drafts are successes, a rejection is one failure:
the maximum-likelihood estimate of a geometric acceptance), recency-weighted and pulled toward the global rate, which
is the prior for new requests. The first steps try every K so the cost model can tell draft passes from tokens; later,
every `probe_every` steps one step runs the K asked longest ago (K = 0 included), so the window never holds a single K
only — then rows and draft tokens would be collinear and the model could not price the alternatives. Probes are keyed
by the K asked, not the longest draft produced: n-gram rarely fills K_max, so K_max would always look stalest.

Seeded sampled requests (seed set, temperature > 0) always get K_max: the random draws a request consumes depend on the
K of each step, so a K that followed load would make the same seed give different text (the scheduler then caps it
at the sequence's fixed share of the token budget, never by what batch mates took). Greedy requests are
deterministic at any K and adapt freely. A static policy (`--speculative-policy static`) always grants K_max.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence as Seq

from engine.sequence import Sequence
from engine.spec.cost_model import StepCostModel
from engine.stats import StepRecord

ACCEPT_DECAY = 0.8  # per verify: weight of a sequence's older evidence
PRIOR_WEIGHT = 1.0  # pseudo-observations of the global rate in each sequence's estimate


def expected_tokens(a: float, k: int) -> float:
    """E[tokens emitted] verifying k drafts at per-token acceptance a (accepted prefix + 1 target token)."""
    if k <= 0:
        return 1.0
    if a >= 1.0:
        return k + 1.0
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def batch_bucket(b: int) -> int:
    """Batch sizes share realized-rate history by power-of-two bucket: 1, 2, 4, 8, ..."""
    return 1 << max(0, (b - 1).bit_length())


def record_verify(seq: Sequence, num_draft: int, num_accepted: int) -> None:
    """Update a sequence's acceptance evidence after a verify of `num_draft` drafts."""
    seq.accept_successes = ACCEPT_DECAY * seq.accept_successes + num_accepted
    seq.accept_failures = ACCEPT_DECAY * seq.accept_failures + (1.0 if num_accepted < num_draft else 0.0)


def needs_fixed_k(seq: Sequence) -> bool:
    """Seeded sampled requests need a K sequence that does not depend on load, or their draws (and text) change."""
    return seq.needs_fixed_k


class StaticPolicy:
    """Always K_max (for requests that allow speculation)."""

    def __init__(self, k_max: int, allowed_k: Seq[int] | None = None):
        self.k = max(k for k in (allowed_k or range(k_max + 1)) if k <= k_max) if k_max else 0

    def choose_k(self, seqs: list[Sequence], budget: int, prefill_tokens: int = 0) -> list[int]:
        return [self.k if s.params.speculative else 0 for s in seqs]

    def observe(self, rec: StepRecord) -> None:
        pass


class AdaptivePolicy:
    def __init__(self, k_max: int, allowed_k: Seq[int] | None = None, *, prior_acceptance: float = 0.6,
                 warmup_steps_per_k: int = 4, probe_every: int = 32):
        self.ks = sorted(k for k in (allowed_k if allowed_k is not None else range(k_max + 1)) if k <= k_max)
        if 0 not in self.ks:
            self.ks.insert(0, 0)
        self.cost = StepCostModel()
        self.global_successes = 4.0 * prior_acceptance  # decayed totals over all sequences' verifies
        self.global_failures = 4.0 * (1.0 - prior_acceptance)
        self.warmup_steps_per_k = warmup_steps_per_k
        self.probe_every = probe_every
        self.steps = 0
        self.last_probe = 0
        self.last_tried: dict[int, int] = {}  # K -> step it was last asked for (the cap of a step's allocation)
        # (batch bucket, drafted?) -> recent realized tokens/s of decode-only steps: the model's reality check
        self.realized: dict[tuple[int, bool], deque[float]] = {}

    @property
    def global_acceptance(self) -> float:
        return self.global_successes / (self.global_successes + self.global_failures)

    def acceptance(self, seq: Sequence) -> float:
        s, f = seq.accept_successes, seq.accept_failures
        return (s + PRIOR_WEIGHT * self.global_acceptance) / (s + f + PRIOR_WEIGHT)

    # -- choosing ------------------------------------------------------------------------------------------------

    def choose_k(self, seqs: list[Sequence], budget: int, prefill_tokens: int = 0) -> list[int]:
        """K per decoding sequence. `prefill_tokens`: prompt tokens expected to run in the same step (priced too)."""
        k_max = self.ks[-1]
        adaptive = [s.params.speculative and not needs_fixed_k(s) for s in seqs]
        fixed = [0 if a or not s.params.speculative else k_max for s, a in zip(seqs, adaptive, strict=True)]
        others = [(s, k) for s, k, a in zip(seqs, fixed, adaptive, strict=True) if not a]
        ks = self._choose([s for s, a in zip(seqs, adaptive, strict=True) if a], others, prefill_tokens)
        it = iter(ks)
        return [next(it) if a else k for k, a in zip(fixed, adaptive, strict=True)]

    def _choose(self, seqs: list[Sequence], others: list[tuple[Sequence, int]], prefill_tokens: int) -> list[int]:
        """Allocation for the adaptive `seqs`; `others` (sequence, fixed K) share the step and its price."""
        if not seqs or len(self.ks) == 1:
            return [0] * len(seqs)
        warmup = self.warmup_steps_per_k * len(self.ks)
        if self.steps < warmup or not self.cost.ready:
            return self._uniform(seqs, self.ks[self.steps % len(self.ks)])  # try every K while the model forms
        accept = [self.acceptance(s) for s in seqs]
        # The rest of the step at any K: its rows, their drafts (capped by room left, as the scheduler does), the
        # tokens they are expected to emit, and the prefill.
        b = len(seqs) + len(others)
        other_k = [max(0, min(k, s.max_total_len - s.num_tokens - 1)) for s, k in others]
        fixed_draft, fixed_passes = sum(other_k), max(other_k, default=0)
        fixed_tokens = sum(expected_tokens(self.acceptance(s), k) for (s, _), k in zip(others, other_k, strict=True))

        def step_time(alloc: list[int]) -> float:
            return max(self.cost.predict(b, fixed_draft + sum(alloc), max(fixed_passes, *alloc), prefill_tokens), 1e-9)

        t0 = step_time([0] * len(seqs))
        per_draft = max(self.cost.predict(b, fixed_draft + 1, fixed_passes, prefill_tokens) - t0, 1e-9)
        theta = ((len(seqs) + fixed_tokens) / t0) * per_draft  # tokens a draft must add to pay for itself
        best_k, best_rate, best_alloc = 0, -1.0, [0] * len(seqs)
        for k in self.ks:
            alloc = [self._own_k(a, k, theta) for a in accept]
            rate = (fixed_tokens + sum(expected_tokens(a, kk) for a, kk in zip(accept, alloc, strict=True))) \
                / step_time(alloc)
            if rate > best_rate:
                best_k, best_rate, best_alloc = k, rate, alloc
        if best_k and self._measured_worse_than_k0(b):
            best_k, best_alloc = 0, [0] * len(seqs)
        if self.steps - self.last_probe >= self.probe_every:
            # Probe the K asked longest ago (K = 0 included): while one K runs, the window holds only its steps and
            # the model cannot tell rows from drafts; acceptance or load may also have moved.
            self.last_probe = self.steps
            best_k = min((kk for kk in self.ks if kk != best_k), key=lambda kk: self.last_tried.get(kk, -1))
            best_alloc = self._uniform(seqs, best_k)
        self.last_tried[best_k] = self.steps
        return best_alloc

    def _measured_worse_than_k0(self, batch: int) -> bool:
        """Guard against a mis-fitted model: at this batch-size bucket, did recent drafting steps actually deliver
        fewer tokens per second than recent K = 0 steps (the probes supply those)?"""
        drafted, plain = self.realized.get((batch_bucket(batch), True)), self.realized.get((batch_bucket(batch), False))
        if not drafted or not plain or len(drafted) < 3 or len(plain) < 3:
            return False
        return statistics.median(drafted) < statistics.median(plain)

    def _own_k(self, a: float, cap: int, theta: float) -> int:
        """Largest allowed k <= cap whose last draft is still worth its cost (a^k >= theta)."""
        own = 0
        for k in self.ks:
            if 0 < k <= cap and a ** k >= theta:
                own = k
        return own

    def _uniform(self, seqs: list[Sequence], k: int) -> list[int]:
        self.last_tried[k] = self.steps
        return [k] * len(seqs)

    # -- learning ------------------------------------------------------------------------------------------------

    def observe(self, rec: StepRecord) -> None:
        self.steps += 1
        verified = rec.num_accepted if rec.num_verified_accepted is None else rec.num_verified_accepted
        for d, acc in zip(rec.num_draft, verified, strict=True):
            if d:
                self.global_successes = 0.98 * self.global_successes + acc
                self.global_failures = 0.98 * self.global_failures + (1.0 if acc < d else 0.0)
        passes = max(rec.num_draft, default=0)
        if rec.batch_size:
            if not rec.num_prefill_tokens and rec.seconds > 0:  # decode-only steps: realized tokens per second
                key = (batch_bucket(rec.batch_size), passes > 0)
                self.realized.setdefault(key, deque(maxlen=8)).append(rec.emitted_tokens / rec.seconds)
        if rec.batch_size or rec.num_prefill_tokens:
            self.cost.observe(rec.batch_size, rec.total_draft, passes, rec.num_prefill_tokens, rec.seconds)


def make_policy(kind: str, k_max: int, allowed_k: Seq[int] | None = None):
    policies = {"adaptive": AdaptivePolicy, "static": StaticPolicy}
    return policies[kind](k_max, allowed_k)
