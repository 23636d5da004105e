"""Speculation policy: how many draft tokens each decoding sequence gets this step.

Goal: maximise expected generated tokens per second. With per-token acceptance a, a sequence verifying k drafts
emits E(a, k) = (1 - a^(k+1)) / (1 - a) tokens in expectation. A step's wall time t(B, K) (draft passes + target verify +
sampling) is measured online per (batch-size bucket, K). For the decoding batch the policy picks

    K* = argmax_K  sum_i E(a_i, min(K, k_max_i)) / t(B, K)

over the allowed K values (0..K_max, or the runner's compiled set), and gives each sequence min(K*, its own best k),
where a sequence's own best k uses its acceptance estimate (moving average; the global rate is the prior for new
requests). K = 0 wins when drafting does not pay: low acceptance, or large batches where a verify pass costs nearly
(1 + K) decode passes. Each cell keeps its last few step times and uses their median, so one step slowed by a
noisy neighbour does not condemn a K. Unmeasured (B, K) cells are explored a few times, and K = 0 regimes re-probe
the least recently measured K now and then, so the table follows load changes. A static policy (`--speculative-policy static`) always grants K_max.

Seeded sampled requests (seed set, temperature > 0) always get K_max: the random draws a request consumes depend on the
K of each step, so a K that followed load would make the same seed give different text. Greedy requests are
deterministic at any K and adapt freely.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence as Seq

from engine.sequence import Sequence
from engine.stats import StepRecord


def expected_tokens(a: float, k: int) -> float:
    """E[tokens emitted] verifying k drafts at per-token acceptance a (accepted prefix + 1 target token)."""
    if k <= 0:
        return 1.0
    if a >= 1.0:
        return k + 1.0
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def batch_bucket(b: int) -> int:
    """Batch sizes share cost cells by power-of-two bucket: 1, 2, 4, 8, ..."""
    return 1 << max(0, (b - 1).bit_length())


def needs_fixed_k(seq: Sequence) -> bool:
    """Seeded sampled requests need a K sequence that does not depend on load, or their draws (and text) change."""
    return seq.params.seed is not None and not seq.params.greedy


class StaticPolicy:
    """Always K_max (for requests that allow speculation)."""

    def __init__(self, k_max: int, allowed_k: Seq[int] | None = None):
        self.k = max(k for k in (allowed_k or range(k_max + 1)) if k <= k_max) if k_max else 0

    def choose_k(self, seqs: list[Sequence], budget: int) -> list[int]:
        return [self.k if s.params.speculative else 0 for s in seqs]

    def observe(self, rec: StepRecord) -> None:
        pass


class AdaptivePolicy:
    def __init__(self, k_max: int, allowed_k: Seq[int] | None = None, *, prior_acceptance: float = 0.6,
                 acceptance_ema: float = 0.05, explore_samples: int = 3, reprobe_every: int = 50, window: int = 9):
        self.ks = sorted(k for k in (allowed_k if allowed_k is not None else range(k_max + 1)) if k <= k_max)
        if 0 not in self.ks:
            self.ks.insert(0, 0)
        self.global_acceptance = prior_acceptance
        self.acceptance_ema = acceptance_ema  # weight of one sequence-step in the global acceptance prior
        self.explore_samples = explore_samples
        self.reprobe_every = reprobe_every
        self.window = window
        self.cost: dict[tuple[int, int], float] = {}  # (batch bucket, K) -> median of recent step seconds
        self.recent: dict[tuple[int, int], deque[float]] = {}
        self.samples: dict[tuple[int, int], int] = {}
        self.last_measured: dict[tuple[int, int], int] = {}  # cell -> step counter when last measured
        self.step_counter = 0
        self.steps_since_spec = 0
        self._last_choice: tuple[int, int] | None = None

    # -- the model -------------------------------------------------------------------------------------------------

    def acceptance(self, seq: Sequence) -> float:
        return self.global_acceptance if seq.acceptance_estimate is None else seq.acceptance_estimate

    def step_cost(self, bucket: int, k: int) -> float | None:
        """Measured seconds for (bucket, k); unmeasured: extrapolated from K=0 assuming each draft position costs
        what the measured neighbour K suggests, else a conservative 30% of a decode step per draft position."""
        if (bucket, k) in self.cost:
            return self.cost[(bucket, k)]
        base = self.cost.get((bucket, 0))
        if base is None:
            return None
        known = [(kk, c) for (b, kk), c in self.cost.items() if b == bucket and kk > 0]
        per_k = max(((c - base) / kk for kk, c in known), default=0.3 * base)
        return base + per_k * k

    def choose_k(self, seqs: list[Sequence], budget: int) -> list[int]:
        ks = self._choose(seqs)
        k_max = self.ks[-1]
        return [k_max if s.params.speculative and needs_fixed_k(s) else k for s, k in zip(seqs, ks)]

    def _choose(self, seqs: list[Sequence]) -> list[int]:
        spec = [s.params.speculative and not needs_fixed_k(s) for s in seqs]
        if not any(spec) or len(self.ks) == 1:
            return [0] * len(seqs)
        bucket = batch_bucket(len(seqs))
        accept = [self.acceptance(s) for s in seqs]
        # Explore: measure each K cell a few times before trusting the table.
        for k in self.ks:
            if self.samples.get((bucket, k), 0) < self.explore_samples:
                return self._grant(seqs, spec, accept, k, bucket)
        best_k, best_rate = 0, -1.0
        for k in self.ks:
            cost = self.step_cost(bucket, k)
            expected = sum(expected_tokens(a, k) if sp else 1.0 for a, sp in zip(accept, spec))
            rate = expected / cost
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k == 0 and self.steps_since_spec >= self.reprobe_every:
            # Re-probe the K measured longest ago: acceptance or load may have changed.
            best_k = min(self.ks[1:], key=lambda k: self.last_measured.get((bucket, k), -1))
        return self._grant(seqs, spec, accept, best_k, bucket)

    def _grant(self, seqs, spec, accept, k: int, bucket: int) -> list[int]:
        self._last_choice = (bucket, k)
        if k == 0:
            return [0] * len(seqs)
        base = self.step_cost(bucket, 0)
        cost_k = self.step_cost(bucket, k)
        out = []
        for sp, a in zip(spec, accept):
            if not sp:
                out.append(0)
                continue
            # A sequence's own best k at this step's marginal cost per draft position (relative to a decode step).
            if base and cost_k and len(seqs) > 1:
                c = max(0.0, (cost_k - base) / (k * base))
                own = max((j for j in self.ks if j <= k), key=lambda j: expected_tokens(a, j) / (1.0 + c * j))
                out.append(own if own > 0 else 0)
            else:
                out.append(k)
        return out

    def observe(self, rec: StepRecord) -> None:
        for d, acc in zip(rec.num_draft, rec.num_accepted):
            if d:
                self.global_acceptance += self.acceptance_ema * (acc / d - self.global_acceptance)
        if rec.total_draft:
            self.steps_since_spec = 0
        else:
            self.steps_since_spec += 1
        # Only pure decode steps measure the cost table (a prefill chunk in the step would inflate it).
        if self._last_choice is None or rec.num_prefill_tokens or not rec.batch_size:
            return
        bucket, k = self._last_choice
        if batch_bucket(rec.batch_size) != bucket:
            return
        key = (bucket, k)
        window = self.recent.setdefault(key, deque(maxlen=self.window))
        window.append(rec.seconds)
        self.cost[key] = statistics.median(window)
        self.samples[key] = self.samples.get(key, 0) + 1
        self.step_counter += 1
        self.last_measured[key] = self.step_counter


def make_policy(kind: str, k_max: int, allowed_k: Seq[int] | None = None):
    policies = {"adaptive": AdaptivePolicy, "static": StaticPolicy}
    return policies[kind](k_max, allowed_k)
