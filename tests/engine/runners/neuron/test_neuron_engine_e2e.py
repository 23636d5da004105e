"""A real LLMEngine built (through settings, builder and registry) on each Neuron runner over its library's contract
model: greedy output, with and without speculation (draft model, n-gram), equals the torch engine's; fused mode
matches too and refuses the sampling parameters it cannot honour."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InvalidRequestError
from engine.sampling.params import SamplingParams
from tests.helpers.engines import greedy, make_engine, run_all, tokens_of

WORDS = ["def", "class", "return", "import", "for", "in", "range", "(", ")", ":", "x", "y", "=", "+", "self", "if",
         "print", "0", "1", "\n", "    ", "None", "while", "."]
LIMITS = {"max_num_seqs": 4, "max_num_batched_tokens": 24, "max_model_len": 128}  # 24: long prompts are chunked
NEURON = {"neuron_context_buckets": "16,64", "neuron_k_values": "2,4"}


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(2, 12))))
        out.append(" ".join(words * (2 if rng.random() < 0.5 else 1)))  # repeats give n-gram lookup matches
    return out


def run(eng, ps: list[str]) -> dict[str, list[int]]:
    for i, p in enumerate(ps):
        ids = eng.tokenizer.encode(p)
        assert len(ids) <= 64
        eng.add_request(f"p{i}", ids, greedy(12 + i % 7, ignore_eos=True, speculative=i % 5 != 2))
    eng.add_request("one", [17], greedy(8, ignore_eos=True))  # a one-token prompt takes the decode graph at 0
    return {rid: tokens_of(o) for rid, o in run_all(eng).items()}


@pytest.fixture(scope="module")
def reference(tiny_pair):
    ps = prompts(14)
    return ps, run(make_engine(tiny_pair[0], **LIMITS), ps)


@pytest.mark.parametrize("method, k", [("none", 0), ("ngram", 4), ("draft", 4)])
def test_greedy_output_equals_torch_engine(tiny_pair, reference, neuron_backend, method, k):
    target, draft = tiny_pair
    eng = make_engine(target, method=method, draft=draft if method == "draft" else None, backend=neuron_backend,
                      num_speculative_tokens=max(k, 1), speculative_policy="static", **LIMITS, **NEURON)
    assert eng.runner.info().backend == neuron_backend
    ps, want = reference
    assert run(eng, ps) == want
    if method != "none":
        assert eng.counters.draft_tokens > 0, "speculation never ran"


def test_adaptive_policy_with_compiled_k(tiny_pair, reference, tnx):
    """The policy's step-level K comes from allowed_k; its per-sequence trim (AdaptivePolicy._grant) may pick any
    smaller K, which the runner pads to a compiled length. Output stays the target's."""
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, backend="neuron-tnx", num_speculative_tokens=4,
                      speculative_policy="adaptive", **LIMITS, **NEURON)
    chosen = []
    choose = eng.policy.choose_k
    eng.policy.choose_k = lambda seqs, budget, *rest: chosen.extend(ks := choose(seqs, budget, *rest)) or ks
    ps, want = reference
    assert run(eng, ps) == want
    assert set(chosen) & {2, 4}


def test_fused_speculation_matches_and_enforces_its_limits(tiny_pair, reference, tnx):
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, backend="neuron-tnx", num_speculative_tokens=3,
                      neuron_fused_speculation=True, **LIMITS, **NEURON)
    assert eng.runner.info().allowed_k == (0,)
    ps, want = reference
    assert run(eng, ps) == want
    assert eng.runner.calls["decode"] < sum(len(v) for v in want.values()), "the device never ran ahead"
    check = eng.runner.check_params
    check(SamplingParams(temperature=0.0))
    check(SamplingParams(temperature=0.7, top_k=1))
    for bad, param in [({"temperature": 0.7}, "temperature"), ({"temperature": 0, "min_p": 0.1}, "min_p"),
                       ({"temperature": 0, "presence_penalty": 0.5}, "presence_penalty"),
                       ({"temperature": 0, "repetition_penalty": 1.2}, "repetition_penalty"),
                       ({"temperature": 0, "logit_bias": {3: 1.0}}, "logit_bias"),
                       ({"temperature": 0, "logprobs": 2}, "logprobs")]:
        with pytest.raises(InvalidRequestError) as e:
            check(SamplingParams(**bad))
        assert e.value.param == param


def test_unfused_runner_accepts_every_sampling_parameter(tiny_pair, tnx):
    eng = make_engine(tiny_pair[0], backend="neuron-tnx", **LIMITS, **NEURON)
    eng.runner.check_params(SamplingParams(temperature=0.9, min_p=0.1, presence_penalty=1.0, logit_bias={3: 2.0},
                                           logprobs=3))
