"""Seeded sampling: per-choice streams are independent across seeds, and a seeded request's text depends on nothing but
the request (not on the per-step token budget, nor on what else is in the batch)."""

from __future__ import annotations

import pytest
import torch

from engine.sampling.params import SamplingParams
from tests.helpers.engines import make_engine, run_all, tokens_of

PROMPT = "for i in range(10):"


def test_choice_streams_are_not_shifted_copies_across_seeds():
    """The old derivation (seed + i) made choice i of seed s the same stream as choice i-1 of seed s+1."""
    from engine.sampling.sampler import choice_generator

    streams = {(s, i): tuple(torch.rand(4, generator=choice_generator(s, i)).tolist())
               for s in (1, 2, 3) for i in range(8)}
    assert len(set(streams.values())) == len(streams), "two (seed, choice) pairs share a random stream"
    # Same (seed, choice) -> same stream: a seeded request repeats.
    assert streams[(1, 3)] == tuple(torch.rand(4, generator=choice_generator(1, 3)).tolist())


@pytest.fixture(scope="module")
def plain(tiny_pair):
    return make_engine(tiny_pair[0], max_num_seqs=8, max_queue=64, max_num_batched_tokens=64, max_model_len=128)


def test_seed_1_and_seed_2_with_n_8_share_no_completion(plain):
    ids = plain.tokenizer.encode(PROMPT)
    for seed in (1, 2):
        plain.add_request(f"s{seed}", ids, SamplingParams(max_tokens=10, temperature=1.0, seed=seed, n=8,
                                                          ignore_eos=True))
    outs = run_all(plain)
    one = [tuple(tokens_of(outs["s1"], i)) for i in range(8)]
    two = [tuple(tokens_of(outs["s2"], i)) for i in range(8)]
    assert len(set(one)) == 8 and len(set(two)) == 8
    assert not set(one) & set(two), "seed=1 and seed=2 share a completion"


def _seeded(seed: int = 11) -> SamplingParams:
    return SamplingParams(max_tokens=24, temperature=1.0, seed=seed, ignore_eos=True)


@pytest.mark.parametrize("method, policy", [("draft", "static"), ("draft", "adaptive"), ("ngram", "static")])
def test_seeded_request_alone_equals_seeded_request_in_a_budget_bound_batch(tiny_pair, method, policy):
    """Budget 12 tokens for 4 slots at K = 4: alone, the request could verify 4 drafts a step; behind two batch mates
    the budget binds (3 decode tokens + 12 drafts > 12). The old scheduler cut K in running-list order, so the seeded
    request (last in the list) verified fewer drafts, consumed other random draws and produced other text."""
    target, draft = tiny_pair
    limits = dict(max_num_seqs=4, max_queue=16, max_num_batched_tokens=12, max_model_len=256)

    def engine():
        return make_engine(target, method=method, draft=draft if method == "draft" else None,
                           num_speculative_tokens=4, speculative_policy=policy, **limits)

    solo = engine()
    ids = solo.tokenizer.encode(PROMPT)
    solo.add_request("seeded", ids, _seeded())
    want = tokens_of(run_all(solo)["seeded"])

    busy = engine()
    tok = busy.tokenizer
    for i, p in enumerate(["def add(a, b):", "class Point:"]):
        mate = SamplingParams(max_tokens=120, temperature=0.0 if i % 2 else 0.8, ignore_eos=True)
        busy.add_request(f"mate{i}", tok.encode(p), mate)
    for _ in range(3):  # the mates are decoding (first in the running list) when the seeded request arrives
        busy.step()
    busy.add_request("seeded", ids, _seeded())
    got = tokens_of(run_all(busy)["seeded"])
    assert busy.counters.draft_tokens > 0, "speculation never ran"
    assert got == want
