"""compute_logprobs reports the raw model's log_softmax, with sorted top alternatives."""

from __future__ import annotations

import pytest
import torch

from engine.sampling.logprobs import compute_logprobs


def test_values_equal_log_softmax_and_top_sorted():
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)) * 3
    chosen = torch.tensor([5, 0, 31, 7])
    out = compute_logprobs(x, chosen, [3, None, 0, 20])
    ref = torch.log_softmax(x, -1)
    assert out[1] is None
    for i in (0, 2, 3):
        lp = out[i]
        assert lp.token_id == int(chosen[i])
        assert lp.logprob == pytest.approx(float(ref[i, chosen[i]]), abs=1e-5)
        vals = [t.logprob for t in lp.top]
        assert vals == sorted(vals, reverse=True)
        for t in lp.top:
            assert t.logprob == pytest.approx(float(ref[i, t.token_id]), abs=1e-5)
    assert len(out[0].top) == 3 and out[2].top == [] and len(out[3].top) == 20
    assert [t.token_id for t in out[0].top] == ref[0].topk(3).indices.tolist()


def test_chosen_token_is_included_when_it_is_the_most_likely():
    x = torch.tensor([[0.0, 5.0, 1.0]])
    out = compute_logprobs(x, torch.tensor([1]), [2])[0]
    assert out.top[0].token_id == 1 and out.top[0].logprob == pytest.approx(out.logprob)


def test_uses_raw_logits_not_processed():
    # logprobs are of the raw model: a huge bias elsewhere (applied only to processed logits) must not matter
    raw = torch.tensor([[1.0, 2.0, 3.0]])
    out = compute_logprobs(raw, torch.tensor([0]), [0])[0]
    assert out.logprob == pytest.approx(float(torch.log_softmax(raw, -1)[0, 0]))


def test_all_none_and_k_larger_than_vocab():
    x = torch.randn(2, 4)
    assert compute_logprobs(x, torch.tensor([0, 1]), [None, None]) == [None, None]
    out = compute_logprobs(x, torch.tensor([0, 1]), [10, 1])
    assert len(out[0].top) == 4 and len(out[1].top) == 1
