"""The speculation policy in isolation (no model): synthetic step costs and acceptance."""

from __future__ import annotations

import collections
import random

import pytest

from engine.sampling.params import SamplingParams
from engine.sequence import Sequence
from engine.spec_decode.acceptance import expected_tokens, record_verify
from engine.spec_decode.goodput import MODEL_ARM, StepTimes, batch_cell
from engine.spec_decode.policy import AdaptivePolicy, StaticPolicy
from engine.stats import StepRecord


def seqs(n: int, acceptance: float | None = None, speculative: bool = True) -> list[Sequence]:
    out = []
    for i in range(n):
        s = Sequence(f"r{i}-0", f"r{i}", 0, [1, 2, 3], SamplingParams(speculative=speculative), 100, frozenset())
        if acceptance is not None:  # evidence worth 20 verifies
            s.accept_successes, s.accept_failures = 20 * acceptance, 20 * (1 - acceptance)
        out.append(s)
    return out


def drive(policy, batch: list[Sequence], acceptance: float, steps: int, cost=lambda b, k: 0.010 * (1 + 0.1 * k)):
    """Run the policy against a simulated engine: step time `cost(batch, k)`, each draft accepted w.p. `acceptance`
    (expected value), per-sequence estimates updated as the engine does."""
    ks = []
    for _ in range(steps):
        k_per_seq = policy.choose_k(batch, budget=10_000)
        k = max(k_per_seq)
        accepted = [round(acceptance * kk) for kk in k_per_seq]
        for s, kk, a in zip(batch, k_per_seq, accepted, strict=True):
            if kk:
                record_verify(s, kk, a)
        policy.observe(StepRecord(len(batch), 0, k_per_seq, accepted, sum(accepted) + len(batch), cost(len(batch), k)))
        ks.append(k)
    return ks


def test_expected_tokens():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12


def test_zero_acceptance_settles_on_k0():
    policy = AdaptivePolicy(k_max=4, probe_every=10_000)
    ks = drive(policy, seqs(1), acceptance=0.0, steps=60)
    assert ks[-20:] == [0] * 20  # probes off: the measured best only


def test_full_acceptance_at_batch_1_speculates():
    policy = AdaptivePolicy(k_max=4)
    ks = drive(policy, seqs(1), acceptance=1.0, steps=80)
    assert sum(k >= 3 for k in ks[-32:]) >= 28  # probes of other arms aside


def test_large_batch_compute_bound_turns_speculation_off():
    # Verify cost grows ~linearly with tokens at batch 64 (compute-bound): drafting does not pay at a = 0.5.
    policy = AdaptivePolicy(k_max=4, probe_every=10_000)
    ks = drive(policy, seqs(64, acceptance=0.5), acceptance=0.5, steps=80, cost=lambda b, k: 0.01 * (1 + k) * 1.1)
    assert ks[-20:] == [0] * 20


def test_reprobes_after_a_long_k0_stretch():
    policy = AdaptivePolicy(k_max=4, probe_every=10)
    ks = drive(policy, seqs(1), acceptance=0.0, steps=100)
    assert any(k > 0 for k in ks[-30:])


def test_requests_that_opt_out_get_no_drafts_and_allowed_k_is_respected():
    policy = AdaptivePolicy(k_max=4, allowed_k=(0, 2))
    batch = seqs(2, acceptance=1.0) + seqs(1, acceptance=1.0, speculative=False)
    for _ in range(30):
        ks = policy.choose_k(batch, 1000)
        assert ks[2] == 0 and set(ks) <= {0, 2}
        policy.observe(StepRecord(3, 0, ks, ks, sum(ks) + 3, 0.01))
    assert StaticPolicy(4, allowed_k=(0, 3)).choose_k(batch, 100) == [3, 3, 0]


def test_seeded_sampled_requests_adapt_like_any_other():
    """Seeded sampled rows are verified by the keyed coupling (their text ignores K), so they adapt down with the rest
    (they used to keep K_max)."""
    policy = AdaptivePolicy(k_max=4, probe_every=10_000)
    batch = seqs(2, acceptance=0.0)
    batch[1].params = SamplingParams(seed=5, temperature=0.8)
    for _ in range(40):
        ks = policy.choose_k(batch, 1000)
        policy.observe(StepRecord(2, 0, ks, [0, 0], 2, 0.01 + 0.005 * sum(ks)))
    assert ks == [0, 0]


def test_cost_model_recovers_coefficients_and_ignores_preempted_steps():
    from engine.spec_decode.cost_model import StepCostModel

    true = dict(c0=0.020, rows=0.001, draft=0.0005, passes=0.004, prefill=0.0001)
    m = StepCostModel()
    for i in range(200):
        b, k, f = 1 + i % 16, i % 5, (i * 37) % 300
        t = true["c0"] + true["rows"] * b + true["draft"] * b * k + true["passes"] * k + true["prefill"] * f
        if i % 23 == 0:
            t *= 5  # a step that lost the CPU to a neighbour
        m.observe(b, b * k, k, f, t)
    assert abs(m.predict(8, 32, 4) - (0.020 + 0.008 + 0.016 + 0.016)) < 1e-3
    assert abs(m.predict(1, 0, 0) - 0.021) < 1e-3


def test_stops_drafting_when_load_makes_drafts_expensive():
    """Phase 1: drafts nearly free (memory-bound) -> speculate. Phase 2: each verified draft token costs more than a
    decode token (compute-bound, batch 12-16) -> K = 0 must win back. The cheap phase's K = 0 measurements are stale
    (K = 0 was slower then); the drafting arm's own rate drops at once, and probes re-measure the others."""
    policy = AdaptivePolicy(k_max=4, probe_every=16)
    cheap = lambda b, d, p: 0.020 + 0.0002 * b + 0.00005 * d + 0.0005 * p  # noqa: E731
    dear = lambda b, d, p: 0.004 + 0.0008 * b + 0.0020 * d + 0.0005 * p  # noqa: E731

    def rate(cost, b, k):  # true tokens/s of uniform K at acceptance 0.8 (round(0.8 k) accepted)
        return b * (1 + round(0.8 * k)) / cost(b, b * k, k)

    assert max(range(5), key=lambda k: rate(cheap, 14, k)) == 4 and max(range(5), key=lambda k: rate(dear, 14, k)) == 0
    for phase, cost in (("cheap", cheap), ("dear", dear)):
        chosen = []
        for i in range(400):
            batch = seqs(12 + i % 5, acceptance=0.8)
            ks = policy.choose_k(batch, 10_000)
            acc = [round(0.8 * k) for k in ks]
            policy.observe(StepRecord(len(batch), 0, ks, acc, sum(acc) + len(batch), cost(len(batch), sum(ks), max(ks))))
            chosen.append(max(ks))
        tail = chosen[-100:]
        if phase == "cheap":
            assert sum(k > 0 for k in tail) > 80
        else:
            assert sum(k == 0 for k in tail) > 80


def test_ngram_short_and_empty_drafts_are_learned_and_probes_stay_rare():
    """An n-gram-like proposer: rows 0-1 find no match (0 drafts whatever the cap), rows 2-3 at most 2 drafts; each
    draft accepted w.p. 0.7 in turn (seeded). Per sequence the policy learns the supply: past what a row can produce
    a larger cap adds no tokens, so K = 2, 3, 4 tie (same drafts, same time) and K = 1 loses. Once measured, probes
    are rare (the re-measure interval grows while the ranking holds) and none is stuck on one arm."""
    rng = random.Random(7)
    policy = AdaptivePolicy(k_max=4)
    batch = seqs(4)
    chosen, probes = [], []
    for i in range(600):
        ks = policy.choose_k(batch, 10_000)
        produced = [0, 0, min(ks[2], 2), min(ks[3], 2)]
        acc = []
        for s, d in zip(batch, produced, strict=True):
            n = 0
            while n < d and rng.random() < 0.7:
                n += 1
            acc.append(n)
            if d:
                record_verify(s, d, n)
        policy.observe(StepRecord(4, 0, produced, acc, sum(acc) + 4, 0.010 + 0.004 + 0.0005 * sum(produced)))
        if i >= 100:
            chosen.append(policy.last_arm)
            probes += [policy.last_arm] if policy.last_probe else []
    empty, short = policy.token_curve(batch[0]), policy.token_curve(batch[2])
    assert max(empty) - min(empty) < 0.05, empty  # no match: no cap adds a token
    assert short[2] - short[1] > 0.3 and short[4] - short[2] < 0.05, short  # q_1 = q_2 = 1, q_3 ~ 0
    assert sum(a >= 2 for a in chosen) >= 0.9 * len(chosen), collections.Counter(chosen)
    assert len(probes) <= 0.06 * len(chosen), collections.Counter(probes)
    assert len(set(probes)) >= 2 or not probes, probes


def test_batch_cells_and_step_times():
    assert [batch_cell(b) for b in (1, 5, 8, 9, 10, 11, 16, 17, 33, 64)] == [1, 5, 8, 10, 10, 12, 16, 20, 40, 64]
    t = StepTimes(window=5, min_samples=3, max_age=100)
    for step, sec in enumerate((0.010, 0.012, 0.090, 0.011)):  # one preempted step
        t.add(16, 0, step, sec)
    assert abs(t.local(16, 0, 10) - 0.011) < 1e-9 and t.local(12, 0, 10) is None  # mean without the outlier
    assert t.local(16, 0, 500) is None  # expired
    for step in range(3):
        t.add(16, 4, step, 0.030)
        t.add(12, 0, step, 0.008)
    # Cell 12 measured K = 0 only: K = 4 is borrowed from cell 16, scaled by the two cells' K = 0 ratio (8/11).
    got = t.borrow(12, {0: t.local(12, 0, 10), 4: None}, 10)
    assert got[0] == 0.008 and abs(got[4] - 0.030 * 0.008 / 0.011) < 1e-9
    # Nothing measured here: the nearest measured cell's times as they are (cell 12 before 16 for cell 10).
    assert t.borrow(10, {0: None, 4: None}, 10) == pytest.approx({0: 0.008, 4: 0.030 * 0.008 / 0.011})


def fitted_policy(c0: float, row: float, draft: float, prefill: float) -> AdaptivePolicy:
    """A policy past warm-up whose cost model has seen 80 steps of t = c0 + row*b + draft*D + prefill*F. Every
    training step carries prefill, so the realized-rate guard (decode-only steps) stays out of the way."""
    policy = AdaptivePolicy(k_max=4, probe_every=10_000)
    for i in range(80):
        b, k, f = 1 + i % 16, i % 5, 1 + (i * 37) % 200
        policy.observe(StepRecord(b, f, [k] * b, [0] * b, b, c0 + row * b + draft * b * k + prefill * f))
    return policy


# Drafts cost 3 ms per token; a row 1 ms; a prompt token 0.1 ms. At acceptance 0.7, one lone sequence gains from a
# draft (1.7 tokens in 8 ms > 1 token in 5 ms) but not by more than one.
COSTS = dict(c0=0.004, row=0.001, draft=0.003, prefill=0.0001)


def test_other_rows_in_the_step_are_priced():
    """One adaptive sequence among 15 that opted out: the step emits 16 tokens in 20 ms at K = 0, and a draft
    (+0.7 tokens for 3 ms) would lower that rate. Priced as a batch of 1 (the old code) it looked worth drafting."""
    policy = fitted_policy(**COSTS)
    batch = seqs(1, acceptance=0.7) + seqs(15, acceptance=0.7, speculative=False)
    assert policy.allocate(batch, MODEL_ARM) == [0] * 16


def test_prefill_in_the_step_is_priced():
    """The same lone sequence sharing its step with 400 prompt tokens (40 ms): drafts now cost little next to the
    step, and all 4 pay (2.8 tokens in 57 ms > 1 token in 45 ms). Priced without the prefill, K stayed at 1."""
    policy = fitted_policy(**COSTS)
    batch = seqs(1, acceptance=0.7)
    assert policy.allocate(batch, MODEL_ARM) == [1]  # alone, decode-only: one draft pays, two do not
    assert policy.allocate(batch, MODEL_ARM, 400) == [4]


def test_seeded_rows_are_allocated_as_unseeded_ones():
    """The cost model allocates seeded sampled rows by their acceptance like any row (they were priced at K_max)."""
    policy = fitted_policy(**COSTS)
    plain = seqs(1, acceptance=0.7) + seqs(7, acceptance=0.1)
    seeded = seqs(1, acceptance=0.7) + seqs(7, acceptance=0.1)
    for s in seeded[1:]:
        s.params = SamplingParams(seed=3, temperature=1.0)
    ks = policy.allocate(seeded, MODEL_ARM)
    assert ks == policy.allocate(plain, MODEL_ARM)
    assert ks[1:] == [0] * 7  # a = 0.1 does not pay for a draft


def test_model_arm_wins_when_acceptance_differs_between_rows():
    """Four rows at a = 0.9 and four at a = 0 share a step whose verify costs 0.8 ms per draft token over 10 ms.
    No uniform cap fits both halves: K = 0 gives 800 tok/s, the best cap (K = 1) ~710; the per-sequence allocation
    (K = 4 for the good rows, 0 for the others) ~900. The policy must run the model arm and deliver >= 0.97x its
    rate, although each arm's time is measured at whatever allocation the estimates gave then."""
    rng = random.Random(3)
    policy = AdaptivePolicy(k_max=4)
    batch = seqs(8)
    truth = [0.9] * 4 + [0.0] * 4
    arms, tokens, seconds = [], 0, 0.0
    for i in range(800):
        ks = policy.choose_k(batch, 10_000)
        acc = []
        for s, k, a in zip(batch, ks, truth, strict=True):
            n = 0
            while n < k and rng.random() < a:
                n += 1
            acc.append(n)
            if k:
                record_verify(s, k, n)
        t = 0.010 + 0.0008 * sum(ks)
        policy.observe(StepRecord(8, 0, ks, acc, sum(acc) + 8, t))
        if i >= 400:
            arms.append(policy.last_arm)
            tokens, seconds = tokens + sum(acc) + 8, seconds + t
    ideal = (4 * expected_tokens(0.9, 4) + 4) / (0.010 + 0.0008 * 16)
    assert arms.count(MODEL_ARM) >= 0.8 * len(arms), collections.Counter(arms)
    assert tokens / seconds >= 0.97 * ideal, (tokens / seconds, ideal)


def test_steps_with_prefill_never_run_an_unmeasured_arm():
    """At c=16 with short requests nearly every step carries a new request's prefill, and such steps time nothing.
    An arm run there without a time of its own in the cell is never measured: the unmeasured-arm probe stuck to
    K_max, and an arm whose time was only interpolated (the model arm, whose draft passes the K = 0..K_max line
    underprices) ran on every such step. Seen on the real pair at c=16: 1.16 tokens per pass, 0.37x K = 0."""
    policy = AdaptivePolicy(k_max=4)
    batch = seqs(16, acceptance=0.1)

    def decode_step() -> None:
        ks = policy.choose_k(batch, 10_000)
        acc = [round(0.1 * k) for k in ks]
        policy.observe(StepRecord(16, 0, ks, acc, 16 + sum(acc), 0.02 + 0.002 * sum(ks) + 0.004 * max(ks)))

    for _ in range(3):  # K = 0 measured, K_max's probe begun (its first step is a catch-up, untimed)
        decode_step()
    for _ in range(50):
        ks = policy.choose_k(batch, 10_000, prefill_tokens=40)
        assert ks == [0] * 16
        policy.observe(StepRecord(17, 40, ks + [0], [0] * 17, 17, 0.05))
    for i in range(60):
        decode_step()
        ks = policy.choose_k(batch, 10_000, prefill_tokens=40)
        assert policy.last_arm == 0 or policy._measured(16, policy.last_arm), (i, policy.last_arm)
        policy.observe(StepRecord(17, 40, ks + [0], [0] * 17, 17, 0.05))
