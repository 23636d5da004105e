"""The hybrid proposer (engine/spec_decode/hybrid.py): prompt lookup where the history has a suffix match of at least
`hybrid_min_match` tokens, the draft model elsewhere; the output stays the target's (greedy tokens and the sampled
distribution), both sources actually draft, and the method needs a draft model like `draft`."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from config.loader import load_settings
from engine.sampling.params import SamplingParams
from engine.spec_decode.ngram import ngram_lookup, ngram_match
from tests.engine.spec_decode.test_spec_e2e import (
    first_tokens,
    prompt_containing_its_likely_continuations,
    prompts,
)
from tests.helpers.engines import greedy, make_engine, run_all, tokens_of


def test_ngram_match_reports_the_matched_length():
    toks = np.array([5, 6, 7, 8, 1, 6, 7])
    assert ngram_match(toks, 1, 4, 2) == ([8, 1], 2)  # suffix (6, 7) recurs at 1-2
    assert ngram_match(np.array([1, 2, 3]), 1, 4, 2) == ([], 0)
    assert ngram_lookup(toks, 1, 4, 2) == [8, 1]


@pytest.mark.parametrize("policy", ["static", "adaptive"])
def test_greedy_output_is_the_targets_and_both_sources_draft(tiny_pair, policy, caplog):
    target, draft = tiny_pair
    limits = dict(max_num_seqs=16, max_num_batched_tokens=128, max_model_len=256)
    base = make_engine(target, **limits)
    eng = make_engine(target, method="hybrid", draft=draft, num_speculative_tokens=3, speculative_policy=policy,
                      **limits)
    ps = prompts(24, seed=3)  # half of them repetitive: lookup finds matches there
    for e in (base, eng):
        for i, p in enumerate(ps):
            e.add_request(f"p{i}", e.tokenizer.encode(p), greedy(16, ignore_eos=True))
    want, got = run_all(base), run_all(eng)
    assert all(tokens_of(got[f"p{i}"]) == tokens_of(want[f"p{i}"]) for i in range(len(ps)))
    hybrid = eng.proposer.inner
    assert hybrid.ngram_drafted > 0 and hybrid.model_drafted > 0
    assert eng.counters.accepted_tokens > 0
    # Lookup rows and draft-model rows verify in one batched selection, not the row-by-row fallback.
    assert "batched token selection failed" not in caplog.text


def test_sampled_distribution_is_the_targets(tiny_pair, caplog):
    target, draft = tiny_pair
    params = SamplingParams(max_tokens=3, temperature=1.0, top_k=6, ignore_eos=True)
    limits = dict(max_num_seqs=64, max_queue=2000, max_num_batched_tokens=1024, max_model_len=128)
    base = make_engine(target, **limits)
    spec = make_engine(target, method="hybrid", draft=draft, num_speculative_tokens=2, speculative_policy="static",
                       hybrid_min_match=1, **limits)
    prompt = prompt_containing_its_likely_continuations(base, base.tokenizer.encode("x = x + 1\nx ="), top_k=6)
    a = first_tokens(base, prompt, 800, params, 2)
    b = first_tokens(spec, prompt, 800, params, 2)
    hybrid = spec.proposer.inner
    assert hybrid.ngram_drafted > 100 and spec.counters.draft_tokens > 300
    cats = sorted(set(a) | set(b))
    table = np.array([[a.count(c) for c in cats], [b.count(c) for c in cats]])
    table = table[:, table.sum(axis=0) >= 10]
    _, p, _, _ = chi2_contingency(table)
    assert p > 1e-3, f"hybrid speculative sampling differs (p={p:.2e})"
    assert "batched token selection failed" not in caplog.text


def test_hybrid_needs_a_draft_model(tiny_pair):
    with pytest.raises(ValueError, match="--speculative-method hybrid needs --draft-model"):
        load_settings({"model": str(tiny_pair[0]), "speculative_method": "hybrid"}, environ={})
    assert load_settings({"speculative_method": "hybrid"}, environ={}).uses_draft_model  # the embedded pair's draft
