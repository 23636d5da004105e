"""The speculation policy's acceptance estimates (engine/spec_decode/policy.py uses them): the geometric expected
tokens of a per-token rate, a sequence's own decayed verify evidence, and the per-draft-position conditionals
(`PositionAcceptance`) and proposer supply (`Supply`) that the token model multiplies into each row's token curve.
The policy module's docstring says how they combine and why per position.
"""

from __future__ import annotations

import math

from engine.sequence import Sequence

ACCEPT_DECAY = 0.95  # per verify: weight of a sequence's older acceptance evidence (~20 verifies; see `_shift`)
PRIOR_COUNT = 4.0  # pseudo-verifies of `prior_acceptance` at draft position 1 (they decay like real ones)
BORROW_WEIGHT = 1.0  # pseudo-verifies of position j - 1's conditional in position j's (all of it until j is reached)
STALE_DECAY = 0.98  # per drafting step, positions 2..K_max: evidence no verify refreshes fades to the borrowed one
_EPS = 1e-6  # probabilities are clipped to [_EPS, 1 - _EPS] before a logit


def expected_tokens(a: float, k: float) -> float:
    """E[tokens emitted] verifying k drafts at per-token acceptance a (accepted prefix + 1 target token)."""
    if k <= 0:
        return 1.0
    if a >= 1.0:
        return k + 1.0
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def record_verify(seq: Sequence, num_draft: int, num_accepted: int) -> None:
    """Update a sequence's acceptance evidence after a verify of `num_draft` drafts."""
    seq.accept_successes = ACCEPT_DECAY * seq.accept_successes + num_accepted
    seq.accept_failures = ACCEPT_DECAY * seq.accept_failures + (1.0 if num_accepted < num_draft else 0.0)


def logit(p: float) -> float:
    p = min(max(p, _EPS), 1.0 - _EPS)
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class PositionAcceptance:
    """Decayed counts per draft position j = 1..K_max of verifies *at risk* at j (a draft at j, drafts 1..j-1
    accepted) and of those that accepted draft j: alpha_j = P(draft j accepted | drafts 1..j-1 accepted).

    A position's counts decay by `decay` per verify only when the verify reaches it: deep positions may be reached
    only by probes, and a per-verify decay of every position would forget them within a step or two at c=16 (the
    curve would fall back to the borrowed value at once). They age slowly per drafting step instead (`age`)."""

    def __init__(self, k_max: int, prior: float, decay: float):
        self.decay = decay
        # (max(K_max, 1) + 1,), index j = position (0 unused); K_max = 0 (fused speculation, K = 0 only) keeps the
        # prior's position 1 so the curve's code needs no special case.
        self.at_risk = [0.0] * (max(k_max, 1) + 1)
        self.accepted = [0.0] * (max(k_max, 1) + 1)
        self.at_risk[1], self.accepted[1] = PRIOR_COUNT, PRIOR_COUNT * prior

    def add(self, num_draft: int, num_accepted: int) -> None:
        """One verify of `num_draft` drafts of which the first `num_accepted` were accepted."""
        for j in range(1, min(num_draft, num_accepted + 1, len(self.at_risk) - 1) + 1):
            self.at_risk[j] = self.decay * self.at_risk[j] + 1.0
            self.accepted[j] = self.decay * self.accepted[j] + (1.0 if num_accepted >= j else 0.0)

    def age(self) -> None:
        """One drafting step: the counts of positions 2..K_max fade by STALE_DECAY (on top of the per-verify decay
        of the positions a verify reaches), so that a deep position's estimate from a few probe steps, which may be
        a few unlucky (or correlated) rows, relaxes toward the position below it until a verify reaches it again,
        and the cap that reaches it gets re-ranked. K = 0 steps do not age the counts (nothing is reached, nothing
        to re-rank). Position 1, reached by every drafting verify, keeps ~1/(1 - GLOBAL_DECAY) verifies."""
        for j in range(2, len(self.at_risk)):  # position 1: every drafting verify reaches it
            self.at_risk[j] *= STALE_DECAY
            self.accepted[j] *= STALE_DECAY

    def conditionals(self) -> list[float]:
        """alpha_j for j = 0..K_max (shape (K_max + 1,), alpha_0 = 1 unused). Position j's estimate has
        BORROW_WEIGHT pseudo-verifies of alpha_{j-1}: a position never reached is priced as the one below it (not
        as an optimistic prior), and a streak shows only once verifies have reached it."""
        out = [1.0, self.accepted[1] / max(self.at_risk[1], 1e-12)]
        for j in range(2, len(self.at_risk)):
            out.append((self.accepted[j] + BORROW_WEIGHT * out[-1]) / (self.at_risk[j] + BORROW_WEIGHT))
        return out


class Supply:
    """Decayed counts, per draft position j = 1..K_max, of verifies asked for >= j drafts that reached j - 1 (at risk)
    and of those that produced the j-th (survived): q_j = prod_{m<=j} survived_m / at_risk_m."""

    def __init__(self, k_max: int, decay: float, prior: float = 1.0):
        self.decay = decay
        self.at_risk = [prior] * (k_max + 1)  # index j = position (0 unused)
        self.survived = [prior] * (k_max + 1)

    def add(self, asked: int, produced: int) -> None:
        for j in range(1, len(self.at_risk)):
            self.at_risk[j] *= self.decay
            self.survived[j] *= self.decay
        for j in range(1, min(asked, len(self.at_risk) - 1) + 1):
            if produced < j - 1:
                break
            self.at_risk[j] += 1.0
            self.survived[j] += 1.0 if produced >= j else 0.0

    def hazard(self, j: int) -> float:
        return self.survived[j] / max(self.at_risk[j], 1e-12)
