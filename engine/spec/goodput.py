"""Realized goodput per (batch-size cell, arm): what the adaptive policy measured, not what a model predicts.

An *arm* is one way of allocating drafts in a step: a uniform cap K for every adaptive row, or the cost model's
per-sequence allocation (`MODEL_ARM`). Each decode-only step that ran an arm adds one sample, its delivered tokens per
sequence-second: per row, so nearby batch sizes compare (on a memory-bound device a step costs about the same at 12
or 16 rows), and in delivered tokens, so whatever the proposer really produced (n-gram's short or missing drafts),
what the verifier accepted and what a stop threw away are all in it.

Per cell and arm the table keeps the last `window` samples (delivered tokens per row, seconds, step taken); the
estimate is their ratio of sums, i.e. goodput itself (a per-step median is biased: one step accepts all drafts, the
next none), after dropping steps that took over 3x the window's median time (a neighbour took the CPU), from at
least `min_samples` samples no older than `max_age` steps. An arm without fresh samples in its own cell borrows the estimate of the nearest cell that has them
(a new batch size starts from its neighbours' ranking instead of exploring from nothing); the policy probes it
locally soon after. Samples age out, so a change of regime (acceptance, co-tenancy, load) is re-measured.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

MODEL_ARM = -1  # the cost model's per-sequence allocation, capped at K_max; arms >= 0 are uniform caps


def batch_cell(b: int) -> int:
    """Batch sizes share measurements within ~12 %: exact up to 8, then three significant bits (8, 10, 12, 14, 16,
    20, 24, ...), rounded up."""
    if b <= 8:
        return max(1, b)
    step = 1 << (b.bit_length() - 3)
    return -(-b // step) * step


class GoodputTable:
    def __init__(self, window: int = 16, min_samples: int = 3, max_age: int = 600):
        self.window = window
        self.min_samples = min_samples
        self.max_age = max_age
        # (cell, arm) -> (step, delivered tokens per row, seconds)
        self.samples: dict[tuple[int, int], deque[tuple[int, float, float]]] = {}

    def add(self, cell: int, arm: int, step: int, tokens_per_row: float, seconds: float) -> None:
        self.samples.setdefault((cell, arm), deque(maxlen=self.window)).append((step, tokens_per_row, seconds))

    def fresh(self, cell: int, arm: int, now: int) -> list[tuple[float, float]]:
        """(tokens per row, seconds) of the samples at (cell, arm) no older than max_age steps."""
        return [(n, t) for s, n, t in self.samples.get((cell, arm), ()) if now - s <= self.max_age]

    def last_step(self, cell: int, arm: int) -> int:
        """Step of the newest sample at (cell, arm); -1 if none."""
        d = self.samples.get((cell, arm))
        return d[-1][0] if d else -1

    def local(self, cell: int, arm: int, now: int) -> float | None:
        """Tokens per sequence-second of this cell's own fresh samples, or None with fewer than min_samples."""
        got = self.fresh(cell, arm, now)
        if len(got) < self.min_samples:
            return None
        limit = 3.0 * statistics.median(t for _, t in got)
        kept = [(n, t) for n, t in got if t <= limit]
        return sum(n for n, _ in kept) / max(sum(t for _, t in kept), 1e-12)

    def step_seconds(self, cell: int, arm: int, now: int) -> float | None:
        """Mean seconds of a step of `arm` in this cell (fresh samples), or None if it has none."""
        got = self.fresh(cell, arm, now)
        return sum(t for _, t in got) / len(got) if got else None

    def estimate(self, cell: int, arm: int, now: int) -> float | None:
        """This cell's own estimate if it has one, else the nearest cell's (in log batch size), else None."""
        own = self.local(cell, arm, now)
        if own is not None:
            return own
        others = sorted({c for c, a in self.samples if a == arm and c != cell}, key=lambda c: abs(math.log(c / cell)))
        for c in others:
            est = self.local(c, arm, now)
            if est is not None:
                return est
        return None
