"""Sampling from processed logits: argmax for greedy rows, inverse-CDF sampling for the rest.

A sampled row draws ONE uniform u and takes the first token whose cumulative probability exceeds u * total
(float64 cumsum, so the mass assigned to each token is exact to ~1e-12 whatever V). The exponential-noise trick
(argmax(probs / E), E ~ Exp(1) per token; nano-vllm's sampler) needs no cumsum, but V random draws per row: torch's
CPU `exponential_` takes ~0.93 ms for V = 49,152 and a uniform_ ~0.14 ms, against ~0.05 ms for cumsum + searchsorted,
so at batch 1 the noise alone was ~8 % of a SmolLM2 decode step and ~1 ms of every sampled draft token (measured here,
1 thread). A row given a CPU generator draws its u from it, independent of the other rows; rows without one share
torch's default generator of the logits' device. The engine passes no generators: seeded requests
are sampled by the keyed Gumbel-max of `engine.spec_decode.coupled` instead (one noise vector per output position, so their
text does not depend on K), everything else from the default generator.

`probs_from_processed` is the one way to turn processed logits into probabilities; the draft proposer and the
rejection sampler both use it, so draft and target distributions are computed the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from engine.sampling.pipeline import RowContext


def choice_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for stream `index` of `seed`, seeded by hashing (seed, index) (tools/measure_seeded_coupling.py
    samples its reference texts with it; the engine keys seeded requests by `engine.spec_decode.coupled.noise_key`).

    Hashing (not `seed + index`) keeps streams of different seeds unrelated: with `seed + index`, stream i of seed s
    was stream i-1 of seed s+1.
    """
    digest = hashlib.blake2b(f"specserve-choice:{seed}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def probs_from_processed(processed: torch.Tensor) -> torch.Tensor:
    """Softmax over the vocabulary in float32: `[N, V]` -> `[N, V]`.

    Greedy rows get the plain softmax of their processed logits too: only their argmax matters.
    """
    return torch.softmax(processed.to(torch.float32), dim=-1)


def row_uniforms(generators: Sequence[torch.Generator | None], device: torch.device | str = "cpu") -> torch.Tensor:
    """One U[0, 1) per row, float64 `[len(generators)]` on `device`: row i from generators[i] (a CPU generator, one
    draw, so it does not depend on the other rows), rows without one together from torch's default generator there."""
    n = len(generators)
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if not seeded:
        return torch.rand(n, dtype=torch.float64, device=device)
    u = torch.rand(n, dtype=torch.float64) if len(seeded) < n else torch.empty(n, dtype=torch.float64)
    for i in seeded:
        u[i] = torch.rand(1, dtype=torch.float64, generator=generators[i])[0]
    return u.to(device, non_blocking=True)


def sample_from_probs(probs: torch.Tensor,
                      generators: Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token per row of `probs` `[n, V]` (>= 0, need not be normalized), each with probability proportional to
    its entry, by inverse CDF with the row's uniform (None: all from the default generator) -> `[n]` long.

    A zero-probability token is never chosen: searchsorted(right=True) returns the first j with cdf_j > u * total,
    and cdf_j > cdf_{j-1} means p_j > 0 (u < 1, so u * total < total in float64). An all-zero row (which a caller
    should never pass) returns the last token."""
    n, vocab = probs.shape
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=probs.device)
    cdf = probs.to(torch.float64).cumsum(dim=-1)  # (n, V)
    u = row_uniforms(generators or [None] * n, probs.device)  # (n,)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)  # (n,)
    return idx.clamp_(max=vocab - 1)


def sample(
    processed: torch.Tensor, rows: Sequence[RowContext], generators: Sequence[torch.Generator | None] | None = None
) -> torch.Tensor:
    """Sample one token per row of processed logits `[N, V]` -> `[N]` long (same device).

    Greedy rows (temperature 0) take the argmax; other rows sample from softmax(processed) with noise from
    `generators[i]` (a CPU generator, or None to use torch's default one; `generators` None: none has one).
    """
    generators = [None] * len(rows) if generators is None else generators
    if processed.shape[0] != len(rows) or len(generators) != len(rows):
        raise ValueError("sample needs one row context and one generator slot per logits row")
    tokens = processed.argmax(dim=-1)  # (N,)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if not sampled:
        return tokens
    if len(sampled) == len(rows):
        return sample_from_probs(probs_from_processed(processed), generators)
    probs = probs_from_processed(processed[sampled])  # (S, V)
    tokens[sampled] = sample_from_probs(probs, [generators[i] for i in sampled])
    return tokens
