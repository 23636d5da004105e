"""Seeded requests keep the target's distribution: over many seeds, the keyed Gumbel coupling (engine.spec_decode.coupled) with
speculation emits what plain unseeded sampling emits, and the choices of one request are independent samples.

Chi-square at p > 1e-3 on contingency tables (as test_spec_e2e), each with a negative control: a broken key the same
test must reject.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency

import engine.select
import engine.spec_decode.draft_model
from engine.sampling.params import SamplingParams
from engine.spec_decode.coupled import gumbel_noise
from tests.engine.spec_decode.test_spec_e2e import prompt_containing_its_likely_continuations
from tests.helpers.engines import make_engine, run_all, tokens_of

LIMITS = dict(max_num_seqs=64, max_queue=2000, max_num_batched_tokens=1024, max_model_len=128)
SEEDS = 800  # x 2 choices = 1600 samples per run
TOP_K = 6
N_READ = 4  # tokens read per choice


def params(seed: int | None) -> SamplingParams:
    """T = 1 with top_k and a penalty (so draft and target rows go through the pipeline), two choices; one token more
    than the test reads, so every read token after the first can be verified (a draft needs room after it)."""
    return SamplingParams(max_tokens=N_READ + 1, temperature=1.0, top_k=TOP_K, presence_penalty=0.5, ignore_eos=True, n=2,
                          seed=seed)


def first_tokens(eng, ids: list[int], seeded: bool) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per request, the first N_READ tokens of choice 0 and of choice 1."""
    for s in range(SEEDS):
        eng.add_request(f"s{s}", ids, params(s if seeded else None))
    outs = run_all(eng)
    return [tuple(tuple(tokens_of(outs[f"s{s}"], i)[:N_READ]) for i in (0, 1)) for s in range(SEEDS)]


def p_same_law(a: list, b: list) -> float:
    """Chi-square p that samples a and b come from one law (cells with >= 10 counts)."""
    cats = sorted(set(a) | set(b))
    table = np.array([[a.count(c) for c in cats], [b.count(c) for c in cats]])
    return float(chi2_contingency(table[:, table.sum(axis=0) >= 10])[1])


def laws_match(got: list[tuple[int, ...]], want: list[tuple[int, ...]]) -> tuple[float, float]:
    """p of the joint law of the first two tokens, and p of the law of the number of distinct tokens among the
    first N_READ (what couples positions shows there)."""
    return (p_same_law([t[:2] for t in got], [t[:2] for t in want]),
            p_same_law([len(set(t)) for t in got], [len(set(t)) for t in want]))


def p_independent(pairs: list[tuple[int, int]]) -> float:
    """Chi-square p that the two coordinates of `pairs` are independent (rows/columns with >= 10 counts)."""
    xs, ys = sorted({x for x, _ in pairs}), sorted({y for _, y in pairs})
    table = np.array([[sum(1 for p in pairs if p == (x, y)) for y in ys] for x in xs])
    table = table[table.sum(axis=1) >= 10][:, table.sum(axis=0) >= 10]
    return float(chi2_contingency(table)[1])


@pytest.fixture(scope="module")
def setup(tiny_pair):
    """(prompt ids, plain unseeded samples without speculation)."""
    base = make_engine(tiny_pair[0], **LIMITS)
    ids = prompt_containing_its_likely_continuations(base, base.tokenizer.encode("x = x + 1\nx ="), top_k=TOP_K)
    return ids, first_tokens(base, ids, seeded=False)


def seeded_run(tiny_pair, ids, method: str):
    target, draft = tiny_pair
    eng = make_engine(target, method=method, draft=draft if method == "draft" else None, num_speculative_tokens=3,
                      speculative_policy="static", **LIMITS)
    out = first_tokens(eng, ids, seeded=True)
    assert eng.counters.draft_tokens > SEEDS, "the second token should mostly come from verification"
    return out


@pytest.mark.parametrize("method", ["draft", "ngram"])
def test_seeded_samples_follow_the_target_and_choices_are_independent(tiny_pair, setup, method):
    ids, plain = setup
    seeded = seeded_run(tiny_pair, ids, method)
    want = [c for pair in plain for c in pair]  # every choice of the plain run is an independent sample
    got = [c for pair in seeded for c in pair]
    p_joint, p_distinct = laws_match(got, want)
    assert p_joint > 1e-3, "seeded joint law of the first two tokens differs from the target's"
    assert p_distinct > 1e-3, "seeded texts repeat tokens more or less often than the target's"
    assert p_independent([(a[0], b[0]) for a, b in seeded]) > 1e-3, "choice 0 and choice 1 are dependent"
    assert len({a for a, _ in seeded}) > TOP_K  # many different texts: the seeds do not collapse


def test_negative_control_noise_without_the_position(tiny_pair, setup, monkeypatch):
    """Every position of a choice reuses one noise vector: later tokens lean toward the first's noise."""
    ids, plain = setup

    def unpositioned(seed, choice, positions, vocab_size):
        return gumbel_noise(seed, choice, [0] * len(list(positions)), vocab_size)

    monkeypatch.setattr(engine.select, "gumbel_noise", unpositioned)
    monkeypatch.setattr(engine.spec_decode.draft_model, "gumbel_noise", unpositioned)
    seeded = seeded_run(tiny_pair, ids, "draft")
    assert min(laws_match([c for p in seeded for c in p], [c for p in plain for c in p])) < 1e-3


def test_negative_control_noise_without_the_choice(tiny_pair, setup, monkeypatch):
    """Both choices share their noise: they are the same sample, so the independence test must fail."""
    ids, _ = setup

    def unchosen(seed, choice, positions, vocab_size):
        return gumbel_noise(seed, 0, positions, vocab_size)

    monkeypatch.setattr(engine.select, "gumbel_noise", unchosen)
    monkeypatch.setattr(engine.spec_decode.draft_model, "gumbel_noise", unchosen)
    seeded = seeded_run(tiny_pair, ids, "draft")
    assert p_independent([(a[0], b[0]) for a, b in seeded]) < 1e-3
