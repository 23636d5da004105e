"""Online model of one engine step's wall time, fitted to every step the engine runs.

    t = c0 + c_rows * B + c_draft * D + c_pass * P + c_prefill * F

B = sequences that produced tokens, D = draft tokens verified (each also costs a draft-model token), P = draft passes
(the longest draft in the step: each pass is one draft-model forward, memory-bound), F = prompt tokens prefilled in the
step. On a memory-bound device c0 (reading the target's weights) dominates and D is almost free, so speculation pays;
on a compute-bound one (large batches, or fp32 on a small CPU) c_draft approaches the cost of a decode token and it
does not. One model for all batch sizes: a new batch size needs no exploration of its own.

Fitted by least squares over a window of recent steps, weighted toward the newest (half-life `half_life` steps, so a
change of load or co-tenancy is followed within a few dozen steps), refitted every few steps; coefficients are kept
>= 0 (a negative cost is noise), and steps far above the fit (a noisy neighbour took the CPU) are dropped before the
refit.
"""

from __future__ import annotations

from collections import deque

import numpy as np

FEATURES = ("const", "rows", "draft_tokens", "draft_passes", "prefill_tokens")


class StepCostModel:
    def __init__(self, window: int = 256, refit_every: int = 8, half_life: float = 48.0):
        self.rows: deque[tuple[float, ...]] = deque(maxlen=window)
        self.times: deque[float] = deque(maxlen=window)
        self.refit_every = refit_every
        self.half_life = half_life
        self.coef: np.ndarray | None = None
        self._since_fit = 0

    def observe(self, rows: int, draft_tokens: int, draft_passes: int, prefill_tokens: int, seconds: float) -> None:
        self.rows.append((1.0, rows, draft_tokens, draft_passes, prefill_tokens))
        self.times.append(seconds)
        self._since_fit += 1
        if self.coef is None or self._since_fit >= self.refit_every:
            self._fit()

    def predict(self, rows: int, draft_tokens: int, draft_passes: int, prefill_tokens: int = 0) -> float:
        assert self.coef is not None
        return float(self.coef @ np.array([1.0, rows, draft_tokens, draft_passes, prefill_tokens]))

    @property
    def ready(self) -> bool:
        return self.coef is not None and len(self.rows) >= 8

    def _fit(self) -> None:
        self._since_fit = 0
        x = np.asarray(self.rows, dtype=np.float64)  # (N, 5)
        y = np.asarray(self.times, dtype=np.float64)  # (N,)
        age = np.arange(len(y) - 1, -1, -1, dtype=np.float64)  # 0 = newest
        sw = np.sqrt(0.5 ** (age / self.half_life))[:, None]  # weighted least squares via sqrt(weight) rows
        coef = self._nonneg_lstsq(x * sw, y * sw[:, 0])
        for _ in range(2):  # drop steps far above the fit (preempted), refit
            resid = y - x @ coef
            mad = np.median(np.abs(resid[-64:])) + 1e-9  # scale from recent steps: older ones may be another regime
            keep = resid < 4.0 * mad
            if keep.sum() < x.shape[1]:
                break
            coef = self._nonneg_lstsq(x[keep] * sw[keep], y[keep] * sw[keep, 0])
        self.coef = coef

    @staticmethod
    def _nonneg_lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Least squares with coefficients >= 0 by a small active set: drop the most negative, refit."""
        # Columns proportional to the intercept column (a constant feature) carry nothing the intercept does not.
        active = [j for j in range(x.shape[1]) if j == 0 or np.ptp(x[:, j] / np.maximum(x[:, 0], 1e-12)) > 0]
        coef = np.zeros(x.shape[1])
        while active:
            sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
            if (sol >= 0).all():
                coef[active] = sol
                return coef
            active.pop(int(np.argmin(sol)))
        return coef
