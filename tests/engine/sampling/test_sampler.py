"""sample / probs_from_processed: greedy is argmax, sampling follows softmax, seeded rows repeat whatever the batch."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from engine.sampling.pipeline import process_logits
from engine.sampling.sampler import probs_from_processed, sample, sample_from_probs
from tests.engine.sampling.helpers import row

V = 8


def test_greedy_rows_take_argmax_in_mixed_batch():
    x = torch.randn(6, V, generator=torch.Generator().manual_seed(0))
    rows = [row(temperature=0.0), row(), row(temperature=0.0), row(), row(temperature=0.0), row()]
    toks = sample(x, rows, [None] * 6)
    assert toks.dtype == torch.long and toks.shape == (6,)
    for i in (0, 2, 4):
        assert int(toks[i]) == int(x[i].argmax())


def test_samples_follow_softmax():
    torch.manual_seed(0)
    target = torch.tensor([0.35, 0.25, 0.15, 0.1, 0.08, 0.04, 0.02, 0.01])
    n = 40_000
    x = target.log().expand(n, V)
    toks = sample(x, [row()] * n, [None] * n)
    counts = torch.bincount(toks, minlength=V).double()
    assert chisquare(counts.numpy(), (target.double() * n).numpy()).pvalue > 1e-3


def test_probs_from_processed_is_fp32_softmax():
    x = torch.randn(3, V).to(torch.bfloat16)
    p = probs_from_processed(x)
    assert p.dtype == torch.float32
    assert torch.allclose(p, torch.softmax(x.float(), -1))
    masked = torch.tensor([[0.0, float("-inf"), 1.0]])
    assert probs_from_processed(masked)[0, 1] == 0.0


def _gens(seeds):
    return [None if s is None else torch.Generator().manual_seed(s) for s in seeds]


def test_seed_reproducible_and_different_seeds_differ():
    x = torch.zeros(1, 1000)  # uniform over 1000 tokens: collisions are rare
    steps = 20

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [int(sample(x, [row(seed=seed)], [g])[0]) for _ in range(steps)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_seeded_rows_independent_of_batch_composition():
    torch.manual_seed(1)
    x = torch.randn(5, 50)
    target_row = x[2:3]
    alone = [int(sample(target_row, [row(seed=42)], _gens([42]))[0]) for _ in range(1)]
    # same seed, same row, but in a batch with seeded, unseeded and greedy neighbours in front of it
    rows = [row(seed=1), row(), row(seed=42), row(temperature=0.0), row()]
    batched = sample(x, rows, _gens([1, None, 42, None, None]))
    assert int(batched[2]) == alone[0]
    # and over many steps, with the neighbours changing between calls
    g_alone, g_batch = _gens([42, 42])
    seq_alone = [int(sample(target_row, [row(seed=42)], [g_alone])[0]) for _ in range(10)]
    seq_batch = []
    for step in range(10):
        neighbours = step % 3
        xb = torch.cat([torch.randn(neighbours, 50), target_row])
        rows = [row()] * neighbours + [row(seed=42)]
        seq_batch.append(int(sample(xb, rows, [None] * neighbours + [g_batch])[-1]))
    assert seq_alone == seq_batch


def test_unseeded_rows_use_global_rng():
    x = torch.zeros(4, 1000)
    torch.manual_seed(3)
    a = sample(x, [row()] * 4, [None] * 4)
    torch.manual_seed(3)
    b = sample(x, [row()] * 4, [None] * 4)
    assert torch.equal(a, b)


def test_temperature_changes_sampled_entropy():
    torch.manual_seed(2)
    base = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0])
    n = 20_000

    def distinct_mass(t):
        out = process_logits(base.expand(n, V), [row(temperature=t)] * n)
        toks = sample(out, [row(temperature=t)] * n, [None] * n)
        p = torch.bincount(toks, minlength=V).double() / n
        return float(-(p[p > 0] * p[p > 0].log()).sum())

    assert distinct_mass(0.3) < distinct_mass(1.0) < distinct_mass(2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_logits_seeded_rows_match_cpu():
    # seeded noise is drawn on CPU from the row's generator, so a seeded row samples the same token on either device
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(4)) * 3
    rows = [row(seed=1), row(), row(temperature=0.0), row(seed=2), row(), row(seed=3)]
    seeds = [1, None, None, 2, None, 3]
    cpu = sample(x, rows, _gens(seeds))
    gpu = sample(x.cuda(), rows, _gens(seeds))
    assert gpu.device.type == "cuda"
    for i in (0, 2, 3, 5):
        assert int(gpu[i]) == int(cpu[i])
    n = 20_000
    target = torch.tensor([0.35, 0.25, 0.15, 0.1, 0.08, 0.04, 0.02, 0.01])
    toks = sample(target.log().expand(n, V).cuda(), [row()] * n, [None] * n).cpu()
    counts = torch.bincount(toks, minlength=V).double()
    assert chisquare(counts.numpy(), (target.double() * n).numpy()).pvalue > 1e-3


def test_sample_from_probs_never_picks_zero_mass_and_needs_no_normalization():
    """Inverse CDF on unnormalized rows with zero-probability gaps (a top-k/grammar mask), the first and last token
    included: every draw lands on a positive entry, in proportion to the unnormalized weights."""
    torch.manual_seed(1)
    weights = torch.tensor([0.0, 3.0, 0.0, 0.0, 1.0, 0.0, 4.0, 0.0])  # total 8, not 1
    n = 40_000
    toks = sample_from_probs(weights.expand(n, V).clone())
    counts = torch.bincount(toks, minlength=V).double()
    assert counts[weights == 0].sum() == 0
    live = weights > 0
    assert chisquare(counts[live].numpy(), (weights[live].double() / 8 * n).numpy()).pvalue > 1e-3


def test_sample_from_probs_large_vocab_tail_mass():
    """At a real vocabulary size (49,152) a token of mass 1e-4 deep in the tail is drawn at its rate: the float64
    cumsum keeps small masses exact far from the start of the row."""
    vocab = 49_152
    probs = torch.full((1, vocab), 0.5 / (vocab - 2))
    probs[0, 7], probs[0, vocab - 3] = 0.5 - 1e-4, 1e-4 + 0.5 / (vocab - 2) * 2  # rows sum to ~1
    gen = torch.Generator().manual_seed(3)
    draws = torch.stack([sample_from_probs(probs, [gen])[0] for _ in range(20_000)])
    hits = int((draws == vocab - 3).sum())
    expect = 20_000 * float(probs[0, vocab - 3] / probs.sum())
    assert abs(hits - expect) < 5 * expect ** 0.5 + 1
    assert abs(int((draws == 7).sum()) - 20_000 * float(probs[0, 7] / probs.sum())) < 5 * (20_000 * 0.25) ** 0.5
