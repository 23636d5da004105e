"""Gumbel-max coupled speculation: randomness keyed by (seed, choice, position), so a seeded sample ignores K.

Rejection sampling (`engine.spec_decode.rejection_sampler`) consumes its random draws in sequence, and how many it consumes
depends on K: the same seed gives other text at another K. Here every output position t of choice `choice` of a request
with `seed` owns one Gumbel noise vector g(seed, choice, t) `[V]`, drawn from a generator seeded by hashing the key, and

- the target's token at t is argmax(log target_probs[t] + g(t)): an exact sample of the target (Gumbel-max trick);
- the draft proposes argmax(log draft_probs[t] + g(t)) with the SAME g(t) (it needs the key, nothing else);
- a draft is accepted while it equals the target's token; the first mismatch (or the bonus row) emits the target's.

So every emitted token is the target's Gumbel-max sample at its position, whatever the draft did and whatever K was:
a seeded output is the same at any K, adaptive or not, and with or without speculation ("drafter-invariant
speculative decoding", Daliri et al. 2024). The price is acceptance: P(both argmaxes agree) is below rejection
sampling's sum_x min(target, draft) (it is at least a / (2 - a) for a = that sum); `coupling_acceptance` computes it
exactly, `docs/DETERMINISM.md` reports it on the default pair.

The engine uses it for every seeded sampled sequence (`Sequence.coupled`): `engine.select` verifies (or, without
drafts, samples) their rows with `coupled_verify`, the draft proposer draws their drafts with `coupled_sample`, and
the policy adapts their K like anyone's. Unseeded requests keep rejection sampling, which accepts more
(docs/DETERMINISM.md has the choice). This module is pure functions on tensors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

_TINY = torch.finfo(torch.float32).tiny


def noise_key(seed: int, choice: int, position: int) -> int:
    """63-bit generator seed of output position `position` of choice `choice` of a request with `seed`.

    Hashed, never summed: (seed, choice) and (seed + 1, choice - 1) must be unrelated streams (issue 15).
    """
    digest = hashlib.blake2b(f"specserve-gumbel:{seed}:{choice}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def gumbel_noise(seed: int, choice: int, positions: Sequence[int], vocab_size: int) -> torch.Tensor:
    """Gumbel(0, 1) noise `[len(positions), V]` float32 on CPU; row r depends only on (seed, choice, positions[r])."""
    noise = torch.empty(len(positions), vocab_size, dtype=torch.float32)
    for r, pos in enumerate(positions):
        gen = torch.Generator().manual_seed(noise_key(seed, choice, pos))
        # E = -log(1 - U) ~ Exp(1) and -log E ~ Gumbel(0, 1). From uniform_ rather than exponential_: the same
        # distribution, but torch's CPU exponential_ takes ~0.93 ms for V = 49,152 and uniform_ ~0.14 ms (1 thread).
        noise[r].uniform_(generator=gen).neg_().log1p_().neg_()
    return noise.clamp_(min=_TINY).log_().neg_()


def coupled_sample(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """argmax(log probs + noise) per row: `[N, V]`, `[N, V]` -> `[N]` long. Zero-probability tokens never win."""
    return (probs.to(torch.float32).log() + noise.to(probs.device)).argmax(dim=-1)


def coupled_verify(
    draft_token_ids: Sequence[Sequence[int]], target_probs: torch.Tensor, noise: torch.Tensor
) -> list[list[int]]:
    """Accepted draft prefix + one target token per sequence, the target's tokens taken by Gumbel-max.

    draft_token_ids  per sequence, k_i >= 0 drafts, each proposed as argmax(log draft_probs + g) with that row's g
    target_probs     `[sum (k_i + 1), V]` processed target distribution, k_i + 1 rows per sequence, in order
    noise            `[sum (k_i + 1), V]` Gumbel noise, row j of sequence i = g(seed_i, choice_i, t_i + j) where t_i
                     is the output position of the sequence's next token (`gumbel_noise`)

    One argmax over all rows and one host sync; no draft probabilities needed (the draft's randomness is the key).
    """
    ks = [len(d) for d in draft_token_ids]
    rows = sum(ks) + len(ks)
    if target_probs.dim() != 2 or target_probs.shape[0] != rows or tuple(noise.shape) != tuple(target_probs.shape):
        raise ValueError(f"target_probs and noise must both be [sum(k_i + 1) = {rows}, V], got "
                         f"{tuple(target_probs.shape)} and {tuple(noise.shape)}")
    target_tokens = coupled_sample(target_probs, noise).tolist()  # (rows,): the target's sample at every position
    out, start = [], 0
    for drafts, k in zip(draft_token_ids, ks, strict=True):
        n = 0
        while n < k and drafts[n] == target_tokens[start + n]:
            n += 1
        # Accepted drafts equal the target's tokens, so the emitted run is the target's own samples t..t+n.
        out.append(target_tokens[start : start + n + 1])
        start += k + 1
    return out


def rejection_acceptance(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """Rejection sampling's per-token acceptance sum_x min(target, draft): `[N, V]` x2 -> `[N]` float64.

    Rows are renormalized in float64 first, as in `coupling_acceptance`: a float32 softmax over 49k tokens sums to
    1 only within ~1e-7, enough to make the two figures disagree at that level.
    """
    p, q = target_probs.double(), draft_probs.double()
    return torch.minimum(p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)).sum(dim=-1)


def coupling_acceptance(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """Exact P(argmax(log p + g) == argmax(log q + g)) over Gumbel g, p = target, q = draft: `[N, V]` x2 -> `[N]`.

    In exponential-race form (token = argmin E_x / p_x, E ~ Exp(1)) both pick x iff E_i > E_x max(p_i/p_x, q_i/q_x)
    for every i != x; integrating over E_x gives P_x = 1 / sum_i max(p_i/p_x, q_i/q_x). With tokens sorted by
    r = p/q, max(.) is p_i/p_x exactly for r_i >= r_x, so the sum is (suffix sum of p)/p_x + (prefix sum of q)/q_x:
    O(V log V) per row instead of O(V^2). Tokens with p_x = 0 or q_x = 0 can never be both argmaxes (P_x = 0).
    """
    p, q = target_probs.double(), draft_probs.double()  # (N, V)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    ratio = torch.where(q > 0, p / q.clamp(min=1e-300), torch.where(p > 0, torch.inf, -1.0))  # both 0: first, unused
    order = ratio.argsort(dim=-1)
    ps, qs = p.gather(1, order), q.gather(1, order)  # (N, V), ascending ratio
    p_suffix = ps.flip(-1).cumsum(-1).flip(-1)  # sum of p over tokens at or after this one (ratio >= r_x)
    q_prefix = qs.cumsum(-1) - qs  # sum of q over tokens before this one (ratio <= r_x; ties give equal terms)
    denom = p_suffix * qs + q_prefix * ps  # = p_x q_x sum_i max(p_i/p_x, q_i/q_x)
    both = (ps > 0) & (qs > 0)
    per_token = torch.where(both, ps * qs / torch.where(both, denom, 1.0), 0.0)  # (N, V) P_x
    return per_token.sum(dim=-1)
