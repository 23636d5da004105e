"""Gumbel-coupled verification (engine.spec_decode.coupled): K-invariant seeded output, exact target marginals, keyed streams.

The models are synthetic: a distribution over V tokens that depends on the whole history (hashed), so a bug that lets
K, the draft, or another position's noise leak into a token shows up as a different token. Statistical checks use
chi-square at p > 1e-3, and each has a negative control (a broken variant the same test must reject).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from engine.spec_decode.coupled import (
    coupled_sample,
    coupled_verify,
    coupling_acceptance,
    gumbel_noise,
    noise_key,
    rejection_acceptance,
)

V = 8
P_MIN = 1e-3


def _history_logits(history: tuple[int, ...], salt: str, scale: float = 1.5) -> torch.Tensor:
    """Deterministic logits `[V]` for a history: a generator seeded by hashing (salt, history)."""
    h = int.from_bytes(hashlib.blake2b(f"{salt}:{history}".encode(), digest_size=8).digest(), "little") >> 1
    return torch.randn(V, generator=torch.Generator().manual_seed(h)) * scale


def target(history) -> torch.Tensor:
    return torch.softmax(_history_logits(tuple(history), "target"), -1)


DRAFTS = {
    "perfect": target,
    "poor": lambda h: torch.softmax(_history_logits(tuple(h), "poor"), -1),
    # most mass where the target has least: nearly every draft is rejected
    "adversarial": lambda h: torch.softmax(-3.0 * _history_logits(tuple(h), "target"), -1),
}


def generate(seed: int, choice: int, k: int, draft, n: int, noise_fn=gumbel_noise, verify=coupled_verify,
             target_fn=target):
    """n tokens of one choice: each step the draft proposes k tokens with the shared keyed noise, the target verifies.

    Returns (tokens, accepted drafts, proposed drafts).
    """
    out: list[int] = []
    accepted = proposed = 0
    while len(out) < n:
        t = len(out)  # output position of the next token
        noise = noise_fn(seed, choice, list(range(t, t + k + 1)), V)  # (k+1, V)
        drafts: list[int] = []
        for j in range(k):
            drafts.append(int(coupled_sample(draft(out + drafts)[None], noise[j : j + 1])[0]))
        target_rows = torch.stack([target_fn(out + drafts[:j]) for j in range(k + 1)])  # (k+1, V)
        emitted = verify([drafts], target_rows, noise)[0]
        accepted += len(emitted) - 1
        proposed += k
        out += emitted
    return out[:n], accepted, proposed


# --- (a) the same keys give the same tokens at any K and with any draft -------------------------------------------


@pytest.mark.parametrize("seed,choice", [(0, 0), (7, 3), (12345, 1)])
def test_output_is_invariant_to_k_and_draft(seed, choice):
    n = 24
    reference, _, _ = generate(seed, choice, 0, DRAFTS["poor"], n)  # K = 0: plain Gumbel-max sampling of the target
    rates = {}
    for name, draft in DRAFTS.items():
        for k in (1, 2, 4):
            tokens, acc, prop = generate(seed, choice, k, draft, n)
            assert tokens == reference, (name, k)
            rates[name, k] = acc / prop
    # the three drafts exercise both paths: all accepted, some, almost none
    assert all(rates["perfect", k] == 1.0 for k in (1, 2, 4))
    assert 0.0 < rates["poor", 1] < 1.0
    assert rates["adversarial", 4] < 0.2
    # and the output depends on the key (the invariance is not an accident of a degenerate target)
    assert generate(seed + 1, choice, 0, DRAFTS["poor"], n)[0] != reference


def test_batched_verify_matches_one_at_a_time():
    gen = torch.Generator().manual_seed(3)
    ks = [0, 3, 1, 4]
    target_rows = torch.softmax(torch.randn(sum(ks) + len(ks), V, generator=gen), -1)
    noise = torch.cat([gumbel_noise(s, 0, range(5 * s, 5 * s + k + 1), V) for s, k in enumerate(ks)])
    target_tok = coupled_sample(target_rows, noise).tolist()
    drafts, start = [], 0
    for i, k in enumerate(ks):  # sequence i's drafts agree with the target for its first i tokens, then differ
        d = target_tok[start : start + k]
        drafts.append([x if j < i else (x + 1) % V for j, x in enumerate(d)])
        start += k + 1
    batched = coupled_verify(drafts, target_rows, noise)
    start = 0
    for i, k in enumerate(ks):
        alone = coupled_verify([drafts[i]], target_rows[start : start + k + 1], noise[start : start + k + 1])[0]
        assert batched[i] == alone
        assert len(alone) == min(i, k) + 1
        start += k + 1


# --- (b) emitted tokens follow the target; broken couplings are caught --------------------------------------------

M = 4000  # keys per statistical test
FIXED_TARGET = torch.softmax(torch.tensor([1.2, 0.4, 0.0, -0.3, 0.9, -1.0, 0.2, 0.6]), -1)
FIXED_DRAFT = torch.softmax(torch.tensor([0.2, 1.1, 0.3, -0.5, 0.0, 0.1, -0.6, 1.0]), -1)


def _fixed_runs(k: int, noise_fn=gumbel_noise, verify=coupled_verify, n: int = 2) -> np.ndarray:
    """First n tokens of M keys, history-independent target and draft (so each position's law is FIXED_TARGET and
    two positions are independent): `[M, n]`."""
    return np.array([generate(s, 0, k, lambda h: FIXED_DRAFT, n, noise_fn, verify, lambda h: FIXED_TARGET)[0]
                     for s in range(M)])


def _pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    return float(chisquare(counts, probs / probs.sum() * counts.sum()).pvalue)


def marginal_p(tokens: np.ndarray) -> float:
    return _pvalue(np.bincount(tokens, minlength=V).astype(float), FIXED_TARGET.double().numpy())


def pair_p(first: np.ndarray, second: np.ndarray) -> float:
    """Chi-square of the (first, second) pair against the product law target x target (64 cells)."""
    p = FIXED_TARGET.double().numpy()
    return _pvalue(np.bincount(first * V + second, minlength=V * V).astype(float), np.outer(p, p).ravel())


@pytest.mark.parametrize("k", [0, 2])
def test_emitted_tokens_follow_target(k):
    runs = _fixed_runs(k)
    assert marginal_p(runs[:, 0]) > P_MIN
    assert marginal_p(runs[:, 1]) > P_MIN
    assert pair_p(runs[:, 0], runs[:, 1]) > P_MIN


def test_negative_control_noise_shared_across_positions():
    # a key without the position: every position of a choice reuses one noise vector
    runs = _fixed_runs(2, noise_fn=lambda s, c, pos, v: gumbel_noise(s, c, [0] * len(pos), v))
    assert marginal_p(runs[:, 0]) > P_MIN  # each position alone still looks right ...
    assert pair_p(runs[:, 0], runs[:, 1]) < P_MIN  # ... but consecutive tokens are no longer independent


def test_negative_control_draft_side_emitted_at_mismatch():
    # at the first mismatch, emit the draft's Gumbel-max (log draft + g) instead of the target's
    def broken(drafts, target_rows, noise):
        out = coupled_verify(drafts, target_rows, noise)
        return [o if len(o) > len(d) else o[:-1] + [d[len(o) - 1]] for o, d in zip(out, drafts, strict=True)]

    runs = _fixed_runs(2, verify=broken)
    assert marginal_p(runs[:, 0]) < P_MIN


# --- exact acceptance formula -------------------------------------------------------------------------------------


def test_coupling_acceptance_matches_monte_carlo():
    gen = torch.Generator().manual_seed(11)
    p = torch.softmax(torch.randn(4, V, generator=gen) * 1.5, -1)
    q = torch.softmax(torch.randn(4, V, generator=gen) * 1.5, -1)
    q[1, 0] = 0.0  # a token the draft cannot propose (top-p / top-k on the draft side)
    p[2, 3] = 0.0  # and one the target cannot emit
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    draws = 40_000
    g = -torch.empty(draws, 4, V).exponential_(generator=gen).log()  # (draws, 4, V)
    mc = ((p.log() + g).argmax(-1) == (q.log() + g).argmax(-1)).double().mean(0)
    exact = coupling_acceptance(p, q)
    assert torch.all((exact - mc).abs() < 4 * (exact * (1 - exact) / draws).sqrt() + 1e-9), (exact, mc)
    # rejection sampling accepts more; the coupling keeps at least a / (2 - a) (Daliri et al. 2024)
    a = rejection_acceptance(p, q)
    assert torch.all(exact <= a + 1e-12) and torch.all(exact >= a / (2 - a) - 1e-12)
    assert torch.allclose(coupling_acceptance(p, p), torch.ones(4, dtype=torch.float64))


def test_coupling_acceptance_broken_formula_is_detected():
    # using min(p, q) as the coupling's acceptance (what rejection sampling gets) is off by more than the MC error
    gen = torch.Generator().manual_seed(12)
    p = torch.softmax(torch.randn(1, V, generator=gen) * 1.5, -1)
    q = torch.softmax(torch.randn(1, V, generator=gen) * 1.5, -1)
    exact, a = coupling_acceptance(p, q), rejection_acceptance(p, q)
    assert float(a - exact) > 4 * float((exact * (1 - exact) / 40_000).sqrt())


# --- (c) keyed streams are independent across seeds and choices ---------------------------------------------------


def test_keys_seed_plus_one_choice_minus_one_are_independent():
    positions = list(range(64))
    a = gumbel_noise(5, 3, positions, 256)  # (64, 256)
    b = gumbel_noise(6, 2, positions, 256)
    assert torch.equal(a, gumbel_noise(5, 3, positions, 256))  # same key, same noise
    assert noise_key(5, 3, 0) != noise_key(6, 2, 0)
    x, y = a.flatten().double(), b.flatten().double()
    r = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert abs(r) < 4 / x.numel() ** 0.5  # uncorrelated (the seed + choice scheme gave r = 1)
    # tokens sampled from one distribution under the two keys agree only as often as independent draws would
    p = FIXED_TARGET[None].expand(1000, V)
    ta = coupled_sample(p, gumbel_noise(5, 3, range(1000), V))
    tb = coupled_sample(p, gumbel_noise(6, 2, range(1000), V))
    agree = float((ta == tb).double().mean())
    expected = float((FIXED_TARGET.double() ** 2).sum())
    assert abs(agree - expected) < 4 * (expected * (1 - expected) / 1000) ** 0.5
