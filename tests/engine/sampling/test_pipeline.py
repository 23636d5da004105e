"""process_logits: each knob does exactly what it is defined to do, batched, without touching its input."""

from __future__ import annotations

import math

import pytest
import torch

from engine.sampling.pipeline import process_logits
from engine.sampling.sampler import probs_from_processed, sample
from tests.engine.sampling.helpers import row

V = 16


def logits(n: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * 2


def test_no_knobs_is_identity_and_input_untouched():
    x = logits(3)
    before = x.clone()
    out = process_logits(x, [row(), row(temperature=0.0), row(seed=3)])
    assert torch.equal(out, before)
    assert out.data_ptr() != x.data_ptr()
    # every knob on, input still untouched
    rows = [
        row(
            prompt=[1, 2],
            output=[2, 3, 3],
            stop=[0],
            repetition_penalty=1.3,
            presence_penalty=0.5,
            frequency_penalty=0.2,
            logit_bias={4: 5.0},
            min_tokens=9,
            temperature=0.7,
            top_k=5,
            top_p=0.8,
            min_p=0.1,
        )
    ] * 3
    process_logits(x, rows)
    assert torch.equal(x, before)


def test_accepts_bf16_and_returns_float32():
    out = process_logits(logits(2).to(torch.bfloat16), [row(temperature=0.5), row()])
    assert out.dtype == torch.float32


def test_repetition_penalty_matches_hand_computation():
    x = torch.tensor([[2.0, -2.0, 1.0, -1.0, 3.0, 0.5]])
    out = process_logits(x, [row(prompt=[0, 1], output=[2], repetition_penalty=2.0, temperature=0.0)])
    # seen in prompt or output: 0, 1, 2 -> positive divided, negative multiplied; others unchanged
    assert out.tolist() == [[1.0, -4.0, 0.5, -1.0, 3.0, 0.5]]


def test_presence_and_frequency_penalties_match_hand_computation():
    x = torch.tensor([[2.0, -2.0, 1.0, -1.0, 3.0, 0.5]])
    rows = [
        row(prompt=[5], output=[0, 0, 0, 3], presence_penalty=0.5, frequency_penalty=0.25, temperature=0.0)
    ]
    out = process_logits(x, rows)
    expected = x.clone()
    expected[0, 0] -= 0.5 + 0.25 * 3
    expected[0, 3] -= 0.5 + 0.25 * 1
    # token 5 appears only in the prompt: OpenAI penalties count generated tokens only
    assert torch.allclose(out, expected)


def test_all_penalties_batched_rows_independent():
    x = logits(3, seed=1)
    rows = [
        row(prompt=[1], output=[2, 2], repetition_penalty=1.5, frequency_penalty=0.5),
        row(prompt=[3], output=[4]),  # no penalty: must stay unchanged
        row(prompt=[5], output=[6], presence_penalty=-1.0, temperature=0.0),
    ]
    out = process_logits(x, rows)
    exp = x.clone()
    for t in (1, 2):
        exp[0, t] = exp[0, t] / 1.5 if exp[0, t] > 0 else exp[0, t] * 1.5
    exp[0, 2] -= 0.5 * 2
    exp[2, 6] += 1.0
    assert torch.allclose(out, exp)


def test_logit_bias_added():
    x = logits(2)
    out = process_logits(x, [row(logit_bias={3: 1.5, 7: -2.0}), row()])
    exp = x.clone()
    exp[0, 3] += 1.5
    exp[0, 7] -= 2.0
    assert torch.allclose(out, exp)


def test_logit_bias_minus_100_never_and_plus_100_always_emitted():
    x = logits(1)
    top = int(x.argmax())
    low = int(x.argmin())
    n = 2000
    xs = x.expand(n, V)
    toks = sample(process_logits(xs, [row(logit_bias={top: -100.0})] * n), [row()] * n, [None] * n)
    assert top not in toks.tolist()
    toks = sample(process_logits(xs, [row(logit_bias={low: 100.0})] * n), [row()] * n, [None] * n)
    assert set(toks.tolist()) == {low}


def test_min_tokens_masks_stop_tokens_until_reached():
    x = torch.zeros(3, V)
    x[:, 0] = 50.0  # EOS is by far the most likely token
    rows = [
        row(output=[1, 2], stop=[0, 9], min_tokens=3),  # 2 < 3: masked
        row(output=[1, 2, 3], stop=[0, 9], min_tokens=3),  # reached: not masked
        row(output=[], stop=[0], min_tokens=0),
    ]
    out = process_logits(x, rows)
    assert out[0, 0] == -math.inf and out[0, 9] == -math.inf
    assert torch.isfinite(out[1]).all() and torch.isfinite(out[2]).all()
    assert int(sample(out, [row(temperature=0.0)] * 3, [None] * 3)[0]) != 0


def test_temperature_changes_entropy_and_greedy_rows_skip_it():
    x = logits(1).expand(4, V)
    rows = [row(temperature=0.5), row(temperature=1.0), row(temperature=2.0), row(temperature=0.0)]
    out = process_logits(x, rows)
    p = probs_from_processed(out)
    ent = -(p * p.log()).sum(-1)
    assert ent[0] < ent[1] < ent[2]
    assert torch.allclose(out[0], x[0] / 0.5)
    assert torch.equal(out[3], x[3])  # greedy: no temperature


def test_top_k_keeps_exactly_k_largest():
    x = logits(2)
    out = process_logits(x, [row(top_k=3), row(top_k=0)])
    kept = torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert sorted(kept) == sorted(x[0].topk(3).indices.tolist())
    assert torch.allclose(out[0][kept], x[0][kept])
    assert torch.equal(out[1], x[1])


def test_top_k_1_and_tiny_top_p_equal_greedy():
    x = logits(64, seed=2)
    greedy = x.argmax(-1)
    for knob in ({"top_k": 1}, {"top_p": 1e-6}):
        out = process_logits(x, [row(temperature=1.5, **knob)] * 64)
        toks = sample(out, [row(temperature=1.5)] * 64, [None] * 64)
        assert torch.equal(toks, greedy), knob


def test_top_p_keeps_smallest_nucleus():
    x = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for top_p, keep in ((0.5, 1), (0.6, 2), (0.8, 2), (0.81, 3), (0.99, 4), (1.0, 4)):
        out = process_logits(x, [row(top_p=top_p)])
        assert int(torch.isfinite(out).sum()) == keep, top_p


def test_top_k_then_top_p_on_renormalized_mass():
    # top_k=2 keeps {0.4, 0.3} -> renormalized 0.571, 0.429; top_p=0.5 then keeps only the first
    x = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    out = process_logits(x, [row(top_k=2, top_p=0.5)])
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_min_p_removes_low_tokens():
    probs = torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.05]])
    out = process_logits(probs.log(), [row(min_p=0.3)])  # threshold 0.12
    assert torch.isfinite(out).tolist() == [[True, True, True, False, False]]
    n = 4000
    toks = sample(process_logits(probs.log().expand(n, 5), [row(min_p=0.3)] * n), [row()] * n, [None] * n)
    assert set(toks.tolist()) == {0, 1, 2}


def test_greedy_rows_ignore_truncation_knobs_but_get_bias():
    x = logits(1)
    low = int(x.argmin())
    out = process_logits(x, [row(temperature=0.0, top_k=1, top_p=0.1, min_p=0.9, logit_bias={low: 100.0})])
    exp = x.clone()
    exp[0, low] += 100.0
    assert torch.equal(out, exp)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_runs_on_device(device):
    x = logits(4).to(device)
    rows = [
        row(
            prompt=[1],
            output=[2],
            repetition_penalty=1.2,
            presence_penalty=0.3,
            logit_bias={1: 1.0},
            top_k=4,
            top_p=0.9,
            min_p=0.05,
            temperature=0.8,
            min_tokens=3,
            stop=[0],
        )
    ] * 4
    out = process_logits(x, rows)
    ref = process_logits(x.cpu(), rows)
    assert out.device.type == device
    assert torch.allclose(out.cpu(), ref, atol=1e-5)


def test_top_k_same_with_or_without_top_p_rows_in_batch():
    # a batch with only top_k takes the topk path; one with a top_p row takes the sort path: same result
    x = logits(2, seed=4)
    x[0, 5] = x[0, 6] = x[0].max() + 1  # a tie at the top
    alone = process_logits(x[:1], [row(top_k=2)])
    mixed = process_logits(x, [row(top_k=2), row(top_p=0.9)])
    assert torch.equal(alone[0], mixed[0])
    assert torch.isfinite(alone[0]).sum() == 2


def test_repetition_penalty_rows_sharing_a_prompt_object():
    x = logits(3, seed=5).abs() + 0.5  # all positive: seen tokens are divided
    shared = [1, 2]
    rows = [
        row(repetition_penalty=2.0, output=[], temperature=0.0),
        row(repetition_penalty=2.0, output=[7], temperature=0.0),
        row(repetition_penalty=2.0, output=[], temperature=0.0),
    ]
    rows[0].prompt_ids = rows[1].prompt_ids = shared  # one sequence's verify rows share its prompt list
    rows[2].prompt_ids = [3]
    out = process_logits(x, rows)
    exp = x.clone()
    for r, toks in ((0, [1, 2]), (1, [1, 2, 7]), (2, [3])):
        exp[r, toks] /= 2.0
    assert torch.allclose(out, exp)
