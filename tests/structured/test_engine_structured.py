"""Structured output through the engine: valid under the schema, lossless under speculation, forced tokens free."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from scipy.stats import chi2_contingency

from engine.sampling.params import SamplingParams
from engine.structured import GrammarSpec
from tests.helpers.engines import final, make_engine, run_all, text_of, tokens_of

# Bounded so a random tiny model finishes every document well inside max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "tag": {"type": "string", "maxLength": 4},
    },
    "required": ["color", "n", "ok", "tag"],
    "additionalProperties": False,
}
PROMPTS = ["def add(a, b):", "x = 1", "class Point:", "import os", "for i in range(10):", "The quick brown fox",
           "Numbers 0123", "print(i)"]
LIMITS = dict(max_num_seqs=8, max_num_batched_tokens=256, max_model_len=256)


def run(eng, params_for) -> dict[str, list]:
    for i, p in enumerate(PROMPTS):
        eng.add_request(f"p{i}", eng.tokenizer.encode(p), params_for(i))
    return run_all(eng)


def greedy_json(i: int) -> SamplingParams:
    return SamplingParams(max_tokens=80, temperature=0.0, structured=GrammarSpec.json_schema(SCHEMA),
                          speculative=i % 5 != 4)  # one request in the batch opts out of speculation


@pytest.fixture(scope="module")
def reference(tiny_pair):
    eng = make_engine(tiny_pair[0], **LIMITS)
    outs = run(eng, greedy_json)
    return {rid: tokens_of(o) for rid, o in outs.items()}, outs


def test_greedy_output_validates_and_stops(reference):
    _, outs = reference
    for rid, o in outs.items():
        assert final(o).finish_reason == "stop", rid
        jsonschema.validate(json.loads(text_of(o)), SCHEMA)


@pytest.mark.parametrize("method", ["draft", "ngram"])
def test_greedy_under_grammar_identical_with_speculation(tiny_pair, reference, method):
    target, draft = tiny_pair
    eng = make_engine(target, method=method, draft=draft if method == "draft" else None, num_speculative_tokens=4,
                      speculative_policy="static", **LIMITS)
    outs = run(eng, greedy_json)
    want, _ = reference
    assert {rid: tokens_of(o) for rid, o in outs.items()} == want
    for o in outs.values():
        jsonschema.validate(json.loads(text_of(o)), SCHEMA)
    spec = [final(outs[f"p{i}"]).spec for i in range(len(PROMPTS)) if i % 5 != 4]
    # `{"color": "` and the other keys are forced: free drafts, all accepted.
    assert all(s.forced_tokens >= 4 for s in spec)
    assert all(s.forced_tokens <= s.accepted_tokens <= s.draft_tokens for s in spec)
    assert final(outs["p4"]).spec.draft_tokens == 0  # opted out
    assert eng.structured.stats.constrained_requests == len(PROMPTS)
    assert eng.structured.stats.compiled == 1  # one schema, compiled once, cached for the other requests


def test_json_object_mode_gives_an_object(tiny_pair):
    eng = make_engine(tiny_pair[0], **LIMITS)
    eng.add_request("r", eng.tokenizer.encode("x ="),
                    SamplingParams(max_tokens=40, temperature=0.0, structured=GrammarSpec.json_object()))
    text = text_of(run_all(eng)["r"])
    assert text.startswith("{")  # may be cut by max_tokens: a random model writes long keys


SMALL = {"type": "object", "properties": {"c": {"enum": ["red", "green", "blue", "cyan"]},
                                          "d": {"type": "integer", "minimum": 0, "maximum": 4}},
         "required": ["c", "d"], "additionalProperties": False}


@pytest.mark.parametrize("method", ["draft", "ngram"])
def test_sampled_distribution_under_grammar_matches_without_speculation(tiny_pair, method):
    """T = 1 with top_k: the joint distribution of the whole constrained document (20 outcomes) with speculation
    cannot be told apart from plain constrained sampling (chi-square on the contingency table)."""
    target, draft = tiny_pair
    params = SamplingParams(max_tokens=24, temperature=1.0, top_k=8, structured=GrammarSpec.json_schema(SMALL))
    limits = dict(max_num_seqs=64, max_queue=2000, max_num_batched_tokens=2048, max_model_len=128)
    base = make_engine(target, **limits)
    spec = make_engine(target, method=method, draft=draft if method == "draft" else None, num_speculative_tokens=3,
                       speculative_policy="static", **limits)
    ids = base.tokenizer.encode("x = ")
    samples = []
    for eng in (base, spec):
        for i in range(800):
            eng.add_request(f"s{i}", ids, params)
        outs = run_all(eng)
        docs = [text_of(outs[f"s{i}"]) for i in range(800)]
        for d in docs:
            jsonschema.validate(json.loads(d), SMALL)
        samples.append(docs)
    assert spec.counters.draft_tokens > 800
    a, b = samples
    cats = sorted(set(a) | set(b))
    table = np.array([[a.count(c) for c in cats], [b.count(c) for c in cats]])
    table = table[:, table.sum(axis=0) >= 10]
    assert table.shape[1] >= 2, "the grammar left the model no choice: the test would prove nothing"
    _, p, _, _ = chi2_contingency(table)
    assert p > 1e-3, f"constrained speculative sampling differs (p={p:.2e})"


def test_forced_runs_are_drafted_beyond_the_policy_k(tiny_pair, reference):
    """K = 1 from the policy, but `{"color": "`-style forced runs are several tokens: they go in one verify."""
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, num_speculative_tokens=1, speculative_policy="static",
                      **LIMITS)
    outs = run(eng, greedy_json)
    want, _ = reference
    assert {rid: tokens_of(o) for rid, o in outs.items()} == want
    spec = final(outs["p0"]).spec
    assert spec.forced_tokens > spec.target_passes, spec  # at K = 1 it could be at most one per pass
