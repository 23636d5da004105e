"""Streaky acceptance: P(draft j accepted | drafts 1..j-1 accepted) rises with j (a first draft that is often wrong,
then runs). A single per-token acceptance a (the geometric model, E(k) = 1 + sum_{j<=k} a^j) fitted to such verifies
undervalues deep drafts: with the conditionals below and a step costing 1 + 0.12 k, K = 4 is the best fixed cap, but
the geometric fit at any cap the policy runs ranks a shorter cap first (K = 2 or 3: 0.87-0.94x). The per-position
token model must find K = 4.

A direct simulation: each row's verify draws four seeded uniforms u_j and accepts the leading run of u_j < alpha_j up
to its cap, fed through `record_verify` and `observe` as the engine does. Fixed caps are scored on the same uniforms
(common random numbers), so the goodput ratio carries little of the acceptance luck.
"""

from __future__ import annotations

import collections
import random

import pytest

from engine.sampling.params import SamplingParams
from engine.sequence import Sequence
from engine.spec_decode.policy import AdaptivePolicy
from engine.stats import StepRecord

ALPHA = (0.4, 0.9, 0.95, 0.95)  # conditional acceptance at draft positions 1..4
K_MAX = 4


def step_seconds(ks: list[int]) -> float:
    """10 ms a step, 1.1 ms per draft pass (the deepest row sets the passes), 0.1 ms per draft of the mean row:
    10 + 1.2 k ms at a uniform cap k."""
    return 0.010 + 0.0011 * max(ks, default=0) + 0.0001 * sum(ks) / max(len(ks), 1)


def true_tokens(k: int) -> float:
    """E[tokens] of one row at cap k under ALPHA: 1 + sum_{j<=k} prod_{m<=j} alpha_m."""
    out, p = 1.0, 1.0
    for a in ALPHA[:k]:
        p *= a
        out += p
    return out


def accepted(u: list[float], k: int) -> int:
    """Leading drafts accepted at cap k for one verify's uniforms `u` (shape (K_MAX,))."""
    n = 0
    while n < k and u[n] < ALPHA[n]:
        n += 1
    return n


def geometric_pick(cap: int) -> int:
    """The cap the geometric model ranks first, fitted (expected values) to verifies at `cap`."""
    n = true_tokens(cap) - 1  # accepted per verify
    rejected = 1.0 - (true_tokens(cap) - true_tokens(cap - 1))  # P(a rejection in the verify)
    a = n / (n + rejected)
    return max(range(K_MAX + 1), key=lambda k: sum(a ** j for j in range(k + 1)) / step_seconds([k]))


def new_seq(i: int) -> Sequence:
    return Sequence(f"r{i}-0", f"r{i}", 0, [1, 2, 3], SamplingParams(temperature=0.0), 10_000, frozenset())


def simulate(c: int, steps: int, seed: int = 11):
    """Run the adaptive policy for `steps` steps of `c` rows; returns (policy, caps of the tail half, tail goodput,
    tail goodput of each fixed cap on the same uniforms)."""
    rng = random.Random(seed)
    policy = AdaptivePolicy(K_MAX)
    batch = [new_seq(i) for i in range(c)]
    tail = steps // 2
    caps: list[int] = []
    tokens, seconds = 0, 0.0
    fixed_tokens = collections.Counter()
    for i in range(steps):
        u = [[rng.random() for _ in range(K_MAX)] for _ in range(c)]  # (c, K_MAX) uniforms of this step
        ks = policy.choose_k(batch, 10_000)
        acc = [accepted(uu, k) for uu, k in zip(u, ks, strict=True)]
        for s, k, n in zip(batch, ks, acc, strict=True):
            if k:
                policy.record_verify(s, k, n)
        t = step_seconds(ks)
        policy.observe(StepRecord(c, 0, ks, acc, sum(acc) + c, t))
        if i >= tail:
            caps.append(max(ks))
            tokens, seconds = tokens + sum(acc) + c, seconds + t
            for k in range(K_MAX + 1):
                fixed_tokens[k] += sum(accepted(uu, k) for uu in u) + c
    fixed = {k: fixed_tokens[k] / (tail * step_seconds([k] * c)) for k in range(K_MAX + 1)}
    return policy, caps, tokens / seconds, fixed


def test_the_premise_k4_wins_and_the_geometric_fit_picks_shorter():
    rates = {k: true_tokens(k) / step_seconds([k]) for k in range(K_MAX + 1)}
    assert max(rates, key=rates.get) == 4
    assert rates[3] < 0.95 * rates[4] and rates[2] < 0.9 * rates[4], rates
    assert all(geometric_pick(cap) < 4 for cap in range(1, K_MAX + 1)), [geometric_pick(c) for c in range(1, 5)]


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("c", [1, 4])
def test_streaky_acceptance_finds_k4(c, seed):
    """The policy's goodput over the last 400 of 800 steps is >= 0.97x the best fixed cap's on the same draws (the
    geometric model settled on K = 2-3 here: 0.89-0.95x), and its global curve prices E(4)/E(2) within 8 % of
    the truth (1.38; the geometric fit: 1.08-1.24)."""
    policy, caps, goodput, fixed = simulate(c, 800, seed)
    best = max(fixed, key=fixed.get)
    assert best == 4, fixed
    assert goodput >= 0.97 * fixed[best], (goodput / fixed[best], collections.Counter(caps), fixed)
    assert caps.count(4) >= 0.85 * len(caps), collections.Counter(caps)
    curve = policy.token_curve(new_seq(99))  # a sequence with no evidence of its own: the global curve
    truth = true_tokens(4) / true_tokens(2)
    assert abs(curve[4] / curve[2] - truth) < 0.08 * truth, (curve, truth)


def test_a_sequence_that_rejects_everything_is_priced_low_quickly():
    """After the streaky run, a new sequence whose first three verifies of 4 drafts each accept none: its own evidence
    moves every position's conditional (log-odds shift), so its E(4) falls near 1 while a fresh one keeps the curve."""
    policy, *_ = simulate(4, 300)
    bad = new_seq(50)
    for _ in range(3):
        policy.record_verify(bad, 4, 0)
    fresh, low = policy.token_curve(new_seq(51)), policy.token_curve(bad)
    assert fresh[4] > 1.8, fresh
    assert low[4] < 1.25, low
    gains = [b - a for a, b in zip(low, low[1:], strict=False)]  # P(drafts 1..j accepted), j = 1..4
    assert all(1.0 >= g >= h >= 0.0 for g, h in zip(gains, gains[1:], strict=False)), gains  # alphas in [0, 1]


def test_no_evidence_prices_deep_positions_as_position_one():
    """Before any verify, positions 2..K_max borrow position 1's prior: E(k) is the geometric curve at the prior
    acceptance, so a deep cap is not made to look good by an optimistic prior. Once verifies reach only position 1
    and 2, positions 3-4 borrow position 2's conditional."""
    policy = AdaptivePolicy(K_MAX, prior_acceptance=0.6)
    curve = policy.token_curve(new_seq(0))
    assert curve == pytest.approx([sum(0.6 ** j for j in range(k + 1)) for k in range(K_MAX + 1)])
    for _ in range(200):  # cap 2, three rows: position 1 accepts 2 in 3, position 2 1 in 2 after it
        policy.observe(StepRecord(3, 0, [2, 2, 2], [2, 1, 0], 3 + 3, 0.01))
    curve = policy.token_curve(new_seq(1))
    p = [curve[j] - curve[j - 1] for j in range(1, K_MAX + 1)]  # P(drafts 1..j accepted), j = 1..4
    assert p[0] == pytest.approx(2 / 3, abs=0.02) and p[1] / p[0] == pytest.approx(0.5, abs=0.03)
    assert p[2] / p[1] == pytest.approx(p[1] / p[0]) and p[3] / p[2] == pytest.approx(p[1] / p[0])  # borrowed
