"""Measured step time per (batch-size cell, arm): the half of goodput the adaptive policy cannot compute.

An *arm* is one way of allocating drafts in a step: a uniform cap K for every adaptive row, or the cost model's
per-sequence allocation (`MODEL_ARM`). The policy scores an arm as (tokens the step is expected to deliver under it,
from ONE acceptance estimate shared by all arms) / (its measured step time here). A step's time carries little luck
(the same rows, the same number of tokens verified), while its delivered tokens carry all of it (a 4-row step either
accepts a run or not): keeping luck out of the per-arm samples is what lets near-tied caps (K = 2..4 within a few %)
be ranked from a handful of steps.

Per cell and arm the table keeps the last `window` step times; the estimate is their mean after dropping steps over
3x the median (a neighbour took the CPU), from at least `min_samples` samples no older than `max_age` steps. An arm
without local samples borrows from the nearest cell within 2x the batch size that measured it *and* an arm measured
here, scaled by the ratio on that common arm (absolute times differ between batch sizes; ratios between arms differ
less between nearby cells, but a CPU's draft cost grows with the batch, so cells further apart lend nothing).
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


class StepTimes:
    def __init__(self, window: int = 8, min_samples: int = 2, max_age: int = 3000, gap: int = 16,
                 max_span: float = 2.0):
        self.window = window
        self.max_span = max_span  # borrow only from cells within this factor of batch size
        self.gap = gap
        self.min_samples = min_samples
        self.max_age = max_age
        self.samples: dict[tuple[int, int], deque[tuple[int, float]]] = {}  # (cell, arm) -> (step, seconds)

    def add(self, cell: int, arm: int, step: int, seconds: float) -> None:
        self.samples.setdefault((cell, arm), deque(maxlen=self.window)).append((step, seconds))

    def last_step(self, cell: int, arm: int) -> int:
        """Step of the newest sample at (cell, arm); -1 if none."""
        d = self.samples.get((cell, arm))
        return d[-1][0] if d else -1

    def local(self, cell: int, arm: int, now: int) -> float | None:
        """Mean seconds of this cell's fresh samples of `arm` (outliers dropped), None with fewer than min_samples.
        Samples after the newest gap of more than `gap` steps (a re-measure of an arm that had not run) replace the
        older ones once there are min_samples of them: otherwise a window of samples from before a change of regime
        would outvote the re-measure for several re-measure intervals."""
        stamped = [(s, t) for s, t in self.samples.get((cell, arm), ()) if now - s <= self.max_age]
        start = max((i for i in range(1, len(stamped)) if stamped[i][0] - stamped[i - 1][0] > self.gap), default=0)
        got = [t for _, t in (stamped[start:] if len(stamped) - start >= self.min_samples else stamped)]
        if len(got) < self.min_samples:
            return None
        limit = 3.0 * statistics.median(got)
        kept = [t for t in got if t <= limit]
        return sum(kept) / len(kept)

    def borrow(self, cell: int, times: dict[int, float | None], now: int) -> dict[int, float | None]:
        """`times` (arm -> this cell's seconds or None) with the gaps filled from other cells, nearest first (in log
        batch size), each scaled by the ratio of the two cells' times on the arms both have. With nothing measured
        here the nearest measured cell's times are taken as they are (a ranking needs only their ratios)."""
        out = dict(times)
        # Only nearby cells: how a draft's cost grows with batch size is what differs between cells (on this CPU a
        # K = 4 step, drafting and verify, was ~1.7x a decode step at batch 1 and ~8x at 16 in in-process probes),
        # so a far cell's ratios mislead; an arm left unknown is probed here instead.
        cells = sorted({c for c, _ in self.samples if c != cell and max(c / cell, cell / c) <= self.max_span},
                       key=lambda c: abs(math.log(c / cell)))
        for c in cells:
            if all(v is not None for v in out.values()):
                break
            theirs = {a: self.local(c, a, now) for a in out}
            common = [a for a in out if out[a] is not None and theirs[a] is not None]
            if common:
                scale = sum(out[a] for a in common) / sum(theirs[a] for a in common)
            elif all(v is None for v in out.values()):
                scale = 1.0
            else:
                continue
            for a, t in theirs.items():
                if out[a] is None and t is not None:
                    out[a] = t * scale
        return out
