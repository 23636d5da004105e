"""Speculative decoding end to end: the output is the target's, whatever the proposer, K or batch mix."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from engine.runners.base import ForwardBatch
from engine.sampling.params import SamplingParams
from tests.helpers.engines import final, greedy, make_engine, run_all, tokens_of

WORDS = ["def", "class", "return", "import", "for", "in", "range", "(", ")", ":", "x", "y", "=", "+", "self", "if",
         "print", "0", "1", "[", "]", "\n", "    ", "None", "True", "while", "os", "sys", ".", ","]


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(2, 24))
        words = list(rng.choice(WORDS, size=k))
        if rng.random() < 0.5:  # repetitive prompts give the n-gram proposer something to find
            words = words * 3
        out.append(" ".join(words))
    return out


@pytest.fixture(scope="module")
def reference(tiny_pair):
    """Greedy tokens of 50 prompts with speculation off."""
    eng = make_engine(tiny_pair[0], max_num_seqs=16, max_num_batched_tokens=128, max_model_len=256)
    ps = prompts(50)
    for i, p in enumerate(ps):
        eng.add_request(f"p{i}", eng.tokenizer.encode(p), greedy(12 + i % 7, ignore_eos=True))
    outs = run_all(eng)
    return ps, {rid: tokens_of(o) for rid, o in outs.items()}


@pytest.mark.parametrize(
    "method, k, policy",
    [("ngram", 2, "static"), ("ngram", 5, "static"), ("draft", 3, "static"), ("draft", 4, "adaptive"),
     ("ngram", 4, "adaptive")],
)
def test_greedy_with_speculation_equals_greedy_without(tiny_pair, reference, method, k, policy):
    target, draft = tiny_pair
    eng = make_engine(target, method=method, draft=draft if method == "draft" else None,
                      num_speculative_tokens=k, speculative_policy=policy,
                      max_num_seqs=16, max_num_batched_tokens=128, max_model_len=256)
    ps, want = reference
    for i, p in enumerate(ps):
        # Mixed batch: some requests opt out of speculation, lengths differ.
        eng.add_request(f"p{i}", eng.tokenizer.encode(p),
                        greedy(12 + i % 7, ignore_eos=True, speculative=i % 7 != 3))
    outs = run_all(eng)
    got = {rid: tokens_of(o) for rid, o in outs.items()}
    assert got == want
    assert eng.counters.draft_tokens > 0, "speculation never ran"
    assert 0 <= eng.counters.accepted_tokens <= eng.counters.draft_tokens
    opted_out = [final(outs[f"p{i}"]).spec.draft_tokens for i in range(50) if i % 7 == 3]
    assert opted_out and all(d == 0 for d in opted_out)


def test_perfect_draft_accepts_everything(tiny_pair):
    """The target as its own draft: greedy acceptance must be total, so tokens/pass approaches K + 1."""
    target, _ = tiny_pair
    eng = make_engine(target, method="draft", draft=target, num_speculative_tokens=4,
                      speculative_policy="static", max_model_len=256)
    eng.add_request("r", eng.tokenizer.encode("def add(a, b):"), greedy(40, ignore_eos=True))
    spec = final(run_all(eng)["r"]).spec
    assert spec.accepted_tokens == spec.draft_tokens > 0
    assert spec.target_passes <= 40 / 5 + 2


def first_tokens(eng, prompt_ids, n_samples: int, params: SamplingParams, n_tokens: int) -> list[tuple[int, ...]]:
    for i in range(n_samples):
        eng.add_request(f"s{i}", prompt_ids, params)
    outs = run_all(eng)
    return [tuple(tokens_of(outs[f"s{i}"])[:n_tokens]) for i in range(n_samples)]


def prompt_containing_its_likely_continuations(eng, suffix: list[int], top_k: int) -> list[int]:
    """A prompt that holds every token among the top_k next-token candidates after it, so n-gram lookup (n = 1)
    always finds the sampled first token in the history and drafts the second. Found by a short fixed-point loop."""
    held: list[int] = []
    for _ in range(8):
        prompt = held + suffix
        logits = eng.runner.execute(ForwardBatch([0], [prompt], [0], [1]))[0]
        top = [t for t in logits.topk(top_k).indices.tolist() if t not in held]
        if not top:
            return prompt
        held = top + held
    return held + suffix


@pytest.mark.parametrize("method", ["draft", "ngram"])
def test_sampled_distribution_with_speculation_matches_without(tiny_pair, method):
    """T = 1 (with top_k and a penalty, so the pipeline is exercised): the first two generated tokens' joint
    distribution cannot be told apart from plain sampling (chi-square on a contingency table)."""
    target, draft = tiny_pair
    params = SamplingParams(max_tokens=3, temperature=1.0, top_k=6, presence_penalty=0.5, ignore_eos=True)
    limits = dict(max_num_seqs=64, max_queue=2000, max_num_batched_tokens=1024, max_model_len=128)
    base = make_engine(target, **limits)
    spec = make_engine(target, method=method, draft=draft if method == "draft" else None,
                       num_speculative_tokens=3, speculative_policy="static", **limits)
    ids = prompt_containing_its_likely_continuations(base, base.tokenizer.encode("x = x + 1\nx ="), top_k=6)
    a = first_tokens(base, ids, 1200, params, 2)
    b = first_tokens(spec, ids, 1200, params, 2)
    assert spec.counters.draft_tokens > 400, "the second token should mostly come from verification"
    cats = sorted(set(a) | set(b))
    table = np.array([[a.count(c) for c in cats], [b.count(c) for c in cats]])
    table = table[:, table.sum(axis=0) >= 10]  # chi-square needs populated cells
    _, p, _, _ = chi2_contingency(table)
    assert p > 1e-3, f"speculative sampling distribution differs (p={p:.2e})"


@pytest.mark.parametrize("policy", ["static", "adaptive"])
def test_seeded_speculative_run_repeats(tiny_pair, policy):
    target, draft = tiny_pair
    runs = []
    for _ in range(2):
        eng = make_engine(target, method="draft", draft=draft, num_speculative_tokens=3, speculative_policy=policy,
                          max_model_len=128)
        eng.add_request("a", eng.tokenizer.encode("for i in"), SamplingParams(max_tokens=20, seed=7, ignore_eos=True))
        eng.add_request("b", eng.tokenizer.encode("class A:"), SamplingParams(max_tokens=20, seed=8, ignore_eos=True))
        outs = run_all(eng)
        runs.append((tokens_of(outs["a"]), tokens_of(outs["b"])))
    assert runs[0] == runs[1]


def test_stop_inside_an_accepted_run_cuts_there(tiny_pair):
    target, _ = tiny_pair
    plain = make_engine(target, max_model_len=128)
    ids = plain.tokenizer.encode("def add(a, b):")
    plain.add_request("r", ids, greedy(30, ignore_eos=True))
    base = tokens_of(run_all(plain)["r"])
    stop_tok = base[10]
    eng = make_engine(target, method="draft", draft=target, num_speculative_tokens=4, speculative_policy="static",
                      max_model_len=128)
    eng.add_request("r", ids, greedy(30, ignore_eos=True, stop_token_ids=[stop_tok]))
    eng.add_request("m", ids, greedy(7, ignore_eos=True))
    outs = run_all(eng)
    assert tokens_of(outs["r"]) == base[: base.index(stop_tok) + 1]
    assert tokens_of(outs["m"]) == base[:7] and final(outs["m"]).finish_reason == "length"


def test_logprobs_with_speculation_equal_logprobs_without(tiny_pair):
    target, _ = tiny_pair
    res = []
    for method, draft in (("none", None), ("draft", target)):
        eng = make_engine(target, method=method, draft=draft, num_speculative_tokens=3, speculative_policy="static",
                          max_model_len=128)
        eng.add_request("r", eng.tokenizer.encode("import os"), greedy(12, ignore_eos=True, logprobs=2))
        outs = run_all(eng)["r"]
        res.append([(lp.token_id, round(lp.logprob, 4), [t.token_id for t in lp.top])
                    for o in outs for lp in o.logprobs])
    assert res[0] == res[1]
