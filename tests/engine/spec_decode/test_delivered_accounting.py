"""Accepted drafts that a stop throws away are not "accepted tokens": usage, counters and the policy's realized rate
count only what the request delivered."""

from __future__ import annotations

from engine.stats import StepRecord
from tests.helpers.engines import final, greedy, make_engine, run_all, tokens_of

K = 4


def test_a_stop_inside_an_accepted_run_counts_only_the_delivered_drafts(tiny_pair):
    target, _ = tiny_pair
    plain = make_engine(target, max_model_len=128)
    ids = plain.tokenizer.encode("def add(a, b):")
    plain.add_request("r", ids, greedy(30, ignore_eos=True))
    base = tokens_of(run_all(plain)["r"])

    # The target drafting for itself accepts every draft: output token 0 comes from the prefill pass, pass p >= 1
    # emits tokens 5p-4 .. 5p (4 accepted drafts, then the bonus). A stop at a token s with s % 5 in {1, 2, 3} ends
    # the request inside an accepted run, throwing away the accepted drafts after it.
    s = next((i for i, t in enumerate(base) if i % (K + 1) in (1, 2, 3) and t not in base[:i]), None)
    assert s is not None, "no usable stop position in the reference output"
    eng = make_engine(target, method="draft", draft=target, num_speculative_tokens=K, speculative_policy="static",
                      max_model_len=128)
    records: list[StepRecord] = []
    observe = eng.policy.observe
    eng.policy.observe = lambda rec: (records.append(rec), observe(rec))
    eng.add_request("r", ids, greedy(30, ignore_eos=True, stop_token_ids=[base[s]]))
    outs = run_all(eng)["r"]
    got = tokens_of(outs)
    assert got == base[: s + 1] and final(outs).finish_reason == "stop"

    passes = s // (K + 1) + 2  # the prefill pass, the full verify passes, the pass that hit the stop
    delivered_drafts = K * (s // (K + 1)) + s % (K + 1)
    spec = final(outs).spec
    assert spec.target_passes == passes
    assert spec.draft_tokens == K * (passes - 1)  # drafting work is still counted in full
    assert spec.accepted_tokens == delivered_drafts  # was K * (passes - 1): counted the thrown-away drafts too
    assert eng.counters.accepted_tokens == delivered_drafts
    assert eng.counters.generation_tokens == len(got)
    assert sum(r.emitted_tokens for r in records) == len(got)  # the realized-rate guard's numerator
    # The acceptance estimate still sees a clean verify: every draft was accepted (a stop is not a rejection).
    assert records[-1].num_accepted[-1] == s % (K + 1) and records[-1].num_verified_accepted[-1] == K
