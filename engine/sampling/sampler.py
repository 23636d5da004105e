"""Sampling from processed logits: argmax for greedy rows, the exponential-noise trick for the rest.

argmax(probs / E) with E ~ Exponential(1) i.i.d. per token draws a token with probability proportional to probs
(it is the Gumbel-max trick in another form; nano-vllm's sampler). It needs no normalization, no cumsum and no host
sync. A row given a CPU generator draws its noise from it, one row at a time, independent of the other rows; rows
without one share torch's default generator of the logits' device. The engine passes no generators: seeded requests
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

_TINY = torch.finfo(torch.float32).tiny


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


def exponential_noise(
    generators: Sequence[torch.Generator | None], vocab_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Exponential(1) noise `[len(generators), V]` on `device`.

    Row i with a generator is drawn on CPU from generators[i] (exactly `vocab_size` draws, so its noise does not depend
    on the other rows) and moved; rows without one are drawn together on `device` from torch's default generator
    there. Zeros (possible in float32) are clamped to the smallest normal float to keep probs / noise finite.
    """
    n = len(generators)
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if not seeded:
        return torch.empty(n, vocab_size, dtype=torch.float32, device=device).exponential_().clamp_(min=_TINY)
    cpu_noise = torch.empty(len(seeded), vocab_size, dtype=torch.float32)  # (S, V)
    for j, i in enumerate(seeded):
        cpu_noise[j].exponential_(generator=generators[i])
    cpu_noise = cpu_noise.to(device, non_blocking=True)
    if len(seeded) == n:
        return cpu_noise.clamp_(min=_TINY)
    noise = torch.empty(n, vocab_size, dtype=torch.float32, device=device).exponential_()
    noise[torch.tensor(seeded, device=device)] = cpu_noise
    return noise.clamp_(min=_TINY)


def sample_from_probs(probs: torch.Tensor,
                      generators: Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token per row of `probs` `[n, V]` (need not be normalized), noise from the row's generator (None: all from
    the default one) -> `[n]` long."""
    noise = exponential_noise(generators or [None] * probs.shape[0], probs.shape[1], probs.device)
    return (probs / noise).argmax(dim=-1)


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
