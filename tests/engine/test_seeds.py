"""Seeded sampling: a seeded request's text depends on nothing but the request — not on speculation (off, n-gram, the
draft at any K, static or adaptive), not on the per-step token budget, not on its batch mates — because every token
it emits is the Gumbel-max sample keyed by (seed, choice, output position) (`engine.spec_decode.coupled`); and per-choice
streams are unrelated across seeds.

The text of a seeded request changed once when the keyed coupling was wired (other randomness than the per-choice
generator streams before); the tests compare configurations with each other, never with stored text.
"""

from __future__ import annotations

import pytest

from engine.sampling.params import SamplingParams
from tests.helpers.engines import final, make_engine, run_all, tokens_of

PROMPT = "for i in range(10):"
MATES = ["def add(a, b):", "class Point:", "import os\nimport sys", "x = [1, 2, 3]"]
# Budget 14 for 6 slots: behind three decoding mates (5 rows with both choices) the budget binds at any K >= 2, so the
# seeded rows get what their mates left (the scheduler serves drafts in running-list order).
LIMITS = dict(max_num_seqs=6, max_queue=16, max_num_batched_tokens=14, max_model_len=256)
N_TOKENS = 32


def seeded(seed: int = 11, **kw) -> SamplingParams:
    """Two choices, with a penalty and top-k so the pipeline shapes both draft and target rows."""
    return SamplingParams(max_tokens=N_TOKENS, temperature=1.0, top_k=40, presence_penalty=0.3, seed=seed, n=2,
                          ignore_eos=True, **kw)


def choices(outs) -> tuple[list[int], list[int]]:
    return tokens_of(outs, 0), tokens_of(outs, 1)


def k_recorder(eng, request_id: str) -> list[int]:
    """The draft budget the scheduler grants `request_id`'s rows, step by step (decode rows only)."""
    seen: list[int] = []
    schedule = eng.scheduler.schedule

    def spy(*a, **kw):
        out = schedule(*a, **kw)
        seen.extend(r.max_draft for r in out.rows if r.seq.request_id == request_id and not r.is_prefill)
        return out

    eng.scheduler.schedule = spy
    return seen


def run_alone_then_in_a_busy_batch(eng, params: SamplingParams):
    """The seeded request alone, then the same request behind three decoding mates (greedy, unseeded sampled, seeded
    with another seed, one opted out of speculation) in the same engine. Returns (alone, busy, Ks granted)."""
    ks = k_recorder(eng, "seeded")
    eng.add_request("seeded", eng.tokenizer.encode(PROMPT), params)
    alone = run_all(eng)["seeded"]
    tok = eng.tokenizer
    mates = [SamplingParams(max_tokens=90, temperature=0.0, ignore_eos=True),
             SamplingParams(max_tokens=90, temperature=0.8, ignore_eos=True),
             SamplingParams(max_tokens=90, temperature=1.0, seed=12, ignore_eos=True, speculative=False)]
    for i, p in enumerate(mates):
        eng.add_request(f"mate{i}", tok.encode(MATES[i]), p)
    for _ in range(3):  # the mates are decoding (first in the running list) when the seeded request arrives
        eng.step()
    eng.add_request("seeded", eng.tokenizer.encode(PROMPT), params)
    busy = run_all(eng)["seeded"]
    return alone, busy, ks


CONFIGS = ([("off", "draft", 4, "adaptive"), ("ngram", "ngram", 4, "static"), ("ngram", "ngram", 4, "adaptive")]
           + [("draft", "draft", k, policy) for k in (1, 2, 4) for policy in ("static", "adaptive")])


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def reference(request, tiny_pair):
    """(dtype, the seeded request's two choices without any proposer)."""
    eng = make_engine(tiny_pair[0], dtype=request.param, **LIMITS)
    eng.add_request("seeded", eng.tokenizer.encode(PROMPT), seeded())
    return request.param, choices(run_all(eng)["seeded"])


@pytest.mark.parametrize("name, method, k, policy", CONFIGS, ids=[f"{c[0]}-k{c[2]}-{c[3]}" for c in CONFIGS])
def test_seeded_text_is_the_same_with_any_speculation_alone_and_in_a_busy_batch(tiny_pair, reference, name, method, k,
                                                                                  policy):
    dtype, want = reference
    target, draft = tiny_pair
    eng = make_engine(target, method=method, draft=draft if method == "draft" else None, dtype=dtype,
                      num_speculative_tokens=k, speculative_policy=policy, **LIMITS)
    params = seeded(speculative=name != "off")
    alone, busy, ks = run_alone_then_in_a_busy_batch(eng, params)
    assert choices(alone) == want, "alone"
    assert choices(busy) == want, "beside batch mates"
    assert want[0] != want[1], "the two choices must be different samples"
    drafted = [final(outs, i).spec.draft_tokens for outs in (alone, busy) for i in (0, 1)]
    if name == "off":
        assert not any(drafted) and not any(ks)
    elif policy == "static":  # the seeded rows themselves drafted, at K and at what the busy budget left
        assert all(d > 0 for d in drafted) and max(ks) == k
    else:  # adaptive: K followed the policy's probes and estimates (on this CPU it settles on 0 after a while)
        assert sum(drafted) > 0 and len(set(ks)) > 1, ks


def test_seed_1_and_seed_2_with_n_8_share_no_completion(tiny_pair):
    """The old per-choice derivation (seed + i) made choice i of seed s the same stream as choice i-1 of seed s+1:
    `seed=1, n=8` and `seed=2, n=8` shared 7 of 8 completions."""
    eng = make_engine(tiny_pair[0], max_num_seqs=8, max_queue=64, max_num_batched_tokens=64, max_model_len=128)
    ids = eng.tokenizer.encode(PROMPT)
    for seed in (1, 2):
        eng.add_request(f"s{seed}", ids, SamplingParams(max_tokens=10, temperature=1.0, seed=seed, n=8,
                                                        ignore_eos=True))
    outs = run_all(eng)
    one = [tuple(tokens_of(outs["s1"], i)) for i in range(8)]
    two = [tuple(tokens_of(outs["s2"], i)) for i in range(8)]
    assert len(set(one)) == 8 and len(set(two)) == 8
    assert not set(one) & set(two), "seed=1 and seed=2 share a completion"
