"""A real LLMEngine built (through settings, builder and registry) on each Neuron runner over fakes written from the
libraries' real sources: greedy output for concurrent requests, with free slots present, with and without speculation
(draft model, n-gram) and in fused mode, equals the torch engine's; and no call ever takes the context-encoding branch
except a prompt's own (a free slot at position 0 would send decode calls there)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InvalidRequestError
from engine.runners.neuron_tnx import FusedTnxRunner
from engine.sampling.params import SamplingParams
from tests.engine.runners.neuron import fake_nxdi, fake_transformers_neuronx
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


def run(eng, ps: list[str], one_token: bool) -> dict[str, list[int]]:
    """All requests at once: 4 slots busy, then free slots as the queue drains (lengths differ)."""
    for i, p in enumerate(ps):
        ids = eng.tokenizer.encode(p)
        assert 2 <= len(ids) <= 64
        eng.add_request(f"p{i}", ids, greedy(12 + i % 7, ignore_eos=True, speculative=i % 5 != 2))
    if one_token:  # tnx runs a one-token prompt through the token-generation graph at position 0
        eng.add_request("one", [17], greedy(8, ignore_eos=True))
    return {rid: tokens_of(o) for rid, o in run_all(eng).items()}


@pytest.fixture(scope="module")
def reference(tiny_pair):
    ps = prompts(14)
    def torch_engine():  # forced: with a fake installed and a device present, "auto" would pick Neuron
        return make_engine(tiny_pair[0], backend="torch", **LIMITS)

    return ps, run(torch_engine(), ps, True), run(torch_engine(), ps, False)


def context_calls(eng) -> int:
    """Prompt encodings the target and draft runners made (warmup included)."""
    proposer = getattr(eng.proposer, "inner", eng.proposer)  # the structured-output wrapper holds the real one
    draft = getattr(proposer, "runner", None)
    return eng.runner.calls["context"] + (draft.calls["context"] if hasattr(draft, "calls") else 0)


def assert_context_only_for_prompts(eng, backend: str) -> None:
    """Every context-encoding route in the fake is one of the runner's own prompt encodings."""
    if backend == "neuron-nxdi":
        routes = fake_nxdi.ROUTES
        assert routes.count("context_encoding_model") == context_calls(eng)
        assert len(routes) > routes.count("context_encoding_model")
    else:
        assert "context" not in fake_transformers_neuronx.ROUTES or isinstance(eng.runner, FusedTnxRunner)


@pytest.mark.parametrize("method, k", [("none", 0), ("ngram", 4), ("draft", 4)])
def test_greedy_output_equals_torch_engine(tiny_pair, reference, neuron_backend, method, k):
    target, draft = tiny_pair
    eng = make_engine(target, method=method, draft=draft if method == "draft" else None, backend=neuron_backend,
                      num_speculative_tokens=max(k, 1), speculative_policy="static", **LIMITS, **NEURON)
    assert eng.runner.info().backend == neuron_backend
    ps, want_tnx, want_nxdi = reference
    tnx = neuron_backend == "neuron-tnx"
    assert run(eng, ps, one_token=tnx) == (want_tnx if tnx else want_nxdi)
    if method != "none":
        assert eng.counters.draft_tokens > 0, "speculation never ran"
    assert_context_only_for_prompts(eng, neuron_backend)


def test_free_slots_never_change_branch(tiny_pair, neuron_backend):
    """Two sequences in four slots for the whole run: the two free slots ride along in every call."""
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, backend=neuron_backend, num_speculative_tokens=4,
                      speculative_policy="static", **LIMITS, **NEURON)
    ref = make_engine(target, backend="torch", **LIMITS)
    ps = prompts(2, seed=3)
    got = {}
    for e in (eng, ref):
        for i, p in enumerate(ps):
            e.add_request(f"p{i}", e.tokenizer.encode(p), greedy(20, ignore_eos=True))
        got[e is eng] = {rid: tokens_of(o) for rid, o in run_all(e).items()}
    assert got[True] == got[False]
    assert_context_only_for_prompts(eng, neuron_backend)


def test_adaptive_policy_with_compiled_k(tiny_pair, reference, tnx):
    """The policy's step-level K comes from allowed_k; its per-sequence trim (AdaptivePolicy._grant) may pick any
    smaller K, which the runner pads to a compiled length. Output stays the target's."""
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, backend="neuron-tnx", num_speculative_tokens=4,
                      speculative_policy="adaptive", **LIMITS, **NEURON)
    chosen = []
    choose = eng.policy.choose_k
    eng.policy.choose_k = lambda *a, **kw: chosen.extend(ks := choose(*a, **kw)) or ks
    ps, want, _ = reference
    assert run(eng, ps, one_token=True) == want
    assert set(chosen) & {2, 4}


def test_fused_speculation_matches_and_keeps_speculating_with_free_slots(tiny_pair, reference, tnx):
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, backend="neuron-tnx", num_speculative_tokens=3,
                      neuron_fused_speculation=True, **LIMITS, **NEURON)
    assert eng.runner.info().allowed_k == (0,)
    ps, want, _ = reference
    assert run(eng, ps, one_token=True) == want
    routes = tnx.ROUTES
    assert eng.runner.calls["decode"] < sum(len(v) for v in want.values()), "the device never ran ahead"
    # Only the one-token prompt's first step is a plain decode (cache id 0, fused_speculation.py 767); free slots
    # (the last steps run with 1-3 of 4 slots) never send a call there.
    assert routes.count("context") == 1 and routes.count("fused") > 10


def test_fused_refuses_what_it_cannot_honour(tiny_pair, tnx):
    target, draft = tiny_pair
    eng = make_engine(target, method="draft", draft=draft, backend="neuron-tnx", num_speculative_tokens=3,
                      neuron_fused_speculation=True, **LIMITS, **NEURON)
    check = eng.runner.check_params
    check(SamplingParams(temperature=0.0))
    check(SamplingParams(temperature=0.7, top_k=1))
    for bad, param in [({"temperature": 0.7}, "temperature"), ({"temperature": 0, "min_p": 0.1}, "min_p"),
                       ({"temperature": 0, "presence_penalty": 0.5}, "presence_penalty"),
                       ({"temperature": 0, "repetition_penalty": 1.2}, "repetition_penalty"),
                       ({"temperature": 0, "logit_bias": {3: 1.0}}, "logit_bias"),
                       ({"temperature": 0, "logprobs": 2}, "logprobs"),
                       ({"temperature": 0, "min_tokens": 4, "max_tokens": 8}, "min_tokens")]:
        with pytest.raises(InvalidRequestError) as e:
            check(SamplingParams(**bad))
        assert e.value.field == param
    with pytest.raises(InvalidRequestError):  # through the engine's admission check too
        eng.add_request("m", [5, 6, 7], SamplingParams(temperature=0, max_tokens=8, min_tokens=4))


def test_unfused_runner_accepts_every_sampling_parameter(tiny_pair, tnx):
    eng = make_engine(tiny_pair[0], backend="neuron-tnx", **LIMITS, **NEURON)
    eng.runner.check_params(SamplingParams(temperature=0.9, min_p=0.1, presence_penalty=1.0, logit_bias={3: 2.0},
                                           logprobs=3, min_tokens=2, max_tokens=8))


def test_nxdi_refuses_one_token_prompts(tiny_pair, nxdi):
    """NxDI pads a context call's positions with 1 and returns the logits at the largest position id
    (model_wrapper.py 764, model_base.py 1014): a 1-token prompt would get a pad token's logits."""
    eng = make_engine(tiny_pair[0], backend="neuron-nxdi", **LIMITS, **NEURON)
    with pytest.raises(InvalidRequestError, match="at least 2 tokens") as e:
        eng.add_request("one", [17], greedy(4))
    assert e.value.field == "prompt"
