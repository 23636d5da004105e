"""Seeded sampled requests under a grammar: grammar-forced drafts are one-hot tokens the keyed Gumbel coupling accepts
(the target puts all its constrained mass on them), so the seeded JSON is the same with and without speculation."""

from __future__ import annotations

import json

import jsonschema
import pytest

from engine.sampling.params import SamplingParams
from engine.structured import GrammarSpec
from tests.helpers.engines import final, make_engine, text_of, tokens_of
from tests.structured.test_engine_structured import LIMITS, PROMPTS, SCHEMA, run


def seeded_json(i: int) -> SamplingParams:
    return SamplingParams(max_tokens=80, temperature=1.0, top_k=8, seed=100 + i,
                          structured=GrammarSpec.json_schema(SCHEMA))


@pytest.mark.parametrize("method, policy", [("draft", "static"), ("ngram", "static"), ("draft", "adaptive")])
def test_seeded_json_is_the_same_with_speculation_and_forced_drafts_are_accepted(tiny_pair, method, policy):
    target, draft = tiny_pair
    want = {rid: tokens_of(o) for rid, o in run(make_engine(target, **LIMITS), seeded_json).items()}
    eng = make_engine(target, method=method, draft=draft if method == "draft" else None, num_speculative_tokens=4,
                      speculative_policy=policy, **LIMITS)
    outs = run(eng, seeded_json)
    assert {rid: tokens_of(o) for rid, o in outs.items()} == want
    assert len({tuple(t) for t in want.values()}) == len(PROMPTS)  # the seeds sampled different documents
    for o in outs.values():
        jsonschema.validate(json.loads(text_of(o)), SCHEMA)
    spec = [final(o).spec for o in outs.values()]
    # `{"color": "` and the other keys are forced: free drafts, all accepted by the coupled verify too.
    assert all(s.forced_tokens >= 4 for s in spec)
    assert all(s.forced_tokens <= s.accepted_tokens <= s.draft_tokens for s in spec)
