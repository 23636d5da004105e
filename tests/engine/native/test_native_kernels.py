"""The hand-written CPU kernels (engine/native): the bf16 linear and the one-call decoder layers.

What is checked: the linear against an fp32 reference and across row counts (bit-identical rows), with bias and a
partial last output group; the decoder against the eager fp32 model on SmolLM2-135M's layer shapes (error no larger
than the eager bf16 step's, as many argmax agreements), padding rows and scattered slots; unsupported models staying on
the eager path; and the build's fallback to the portable path with a reason. Batch invariance of the native step is in
tests/engine/models/test_batch_invariance.py (parametrized over both invariant implementations).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import engine.native as native_kernels
from engine.models.config import ModelConfig
from engine.models.llama import LlamaForCausalLM
from engine.native import build
from engine.native.linear import NativeLinear, pack_weight
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner

pytestmark = pytest.mark.skipif(not native_kernels.load(), reason=f"native kernels: {native_kernels.native_reason()}")

SMOL = dict(model_type="llama", vocab_size=512, hidden_size=576, intermediate_size=1536, num_layers=2, num_heads=9,
            num_kv_heads=3, head_dim=64, max_position_embeddings=1024, tie_word_embeddings=True)


@pytest.mark.parametrize(("n", "k"), [(960, 576), (576, 1536), (100, 64), (49, 32)])
def test_linear_matches_fp32_reference_and_rows_are_independent(n, k):
    gen = torch.Generator().manual_seed(n + k)
    lin = torch.nn.Linear(k, n, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen) * 0.05)
        lin.bias.copy_(torch.randn(n, generator=gen))
    lin = lin.to(torch.bfloat16)
    native = NativeLinear(lin)
    x = torch.randn(13, k, generator=gen).bfloat16()
    got = native(x)  # (13, n) bf16
    ref = F.linear(x.float(), lin.weight.float(), lin.bias.float())
    assert got.shape == (13, n) and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, atol=0.02 * ref.abs().max().item(), rtol=0.01)
    for rows in ([0], [3, 7], list(range(6)), list(range(1, 13))):  # tiles of 1..6 rows, any composition
        assert torch.equal(native(x[rows]), got[rows])


def test_pack_weight_layout():
    w = torch.arange(70 * 4, dtype=torch.float32).view(70, 4).bfloat16()
    p = pack_weight(w)  # (2, 2, 64, 2)
    assert p.shape == (2, 2, 64, 2)
    assert p[1, 1, 3, 0] == w[67, 2] and p[0, 0, 5, 1] == w[5, 1] and torch.all(p[1, :, 6:] == 0)


def _smol_runner(dtype: torch.dtype, *, native: bool = True, slots: int = 4) -> TorchRunner:
    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelConfig(**SMOL))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.06) if p.dim() >= 2 else p.uniform_(0.8, 1.2)
    return TorchRunner(model.to(dtype), max_slots=slots, max_model_len=256, native=native)


def _run(runner: TorchRunner, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """Prefill slot 2 with `prompt`, then decode `continuation` one token at a time: (all logits) float32."""
    logits = [runner.execute(ForwardBatch([2], [prompt], [0], [len(prompt)]))]
    for i, tok in enumerate(continuation):
        logits.append(runner.execute(ForwardBatch([2], [[tok]], [len(prompt) + i], [1])))
    return torch.cat(logits)


def test_native_decoder_is_as_accurate_as_the_eager_bf16_step():
    native, eager = _smol_runner(torch.bfloat16), _smol_runner(torch.bfloat16, native=False)
    ref = _smol_runner(torch.float32)
    assert native.native_reason is None and native.model.native is not None and eager.model.native is None
    toks = torch.randint(0, 512, (90,), generator=torch.Generator().manual_seed(5)).tolist()
    want, got, old = (_run(r, toks[:70], toks[70:]) for r in (ref, native, eager))
    err_native, err_eager = (got - want).abs().mean().item(), (old - want).abs().mean().item()
    assert err_native <= 1.25 * err_eager, (err_native, err_eager)
    agree_native = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    agree_eager = (old.argmax(-1) == want.argmax(-1)).float().mean().item()
    assert agree_native >= agree_eager - 0.03 and agree_native >= 0.85, (agree_native, agree_eager)


def test_native_decoder_handles_padding_and_scattered_slots():
    """Rows of different lengths (padding to the scratch position) in slots 3 and 0: each row's logits equal the same
    row run alone, and the padding wrote nothing a later read sees."""
    runner = _smol_runner(torch.bfloat16)
    gen = torch.Generator().manual_seed(9)
    a, b = torch.randint(0, 512, (40,), generator=gen).tolist(), torch.randint(0, 512, (9,), generator=gen).tolist()
    both = runner.execute(ForwardBatch([3, 0], [a, b], [0, 0], [2, 1]))  # (3, vocab)
    alone_a = runner.execute(ForwardBatch([3], [a], [0], [2]))
    alone_b = runner.execute(ForwardBatch([0], [b], [0], [1]))
    assert torch.equal(both[:2], alone_a) and torch.equal(both[2:], alone_b)
    nxt = runner.execute(ForwardBatch([0, 3], [[5], [6]], [9, 40], [1, 1]))
    assert torch.equal(nxt[0], runner.execute(ForwardBatch([0], [[5]], [9], [1]))[0])


def test_models_the_kernels_do_not_cover_stay_eager():
    cfg = ModelConfig(**{**SMOL, "model_type": "qwen3", "qk_norm": True, "num_layers": 1})
    runner = TorchRunner(LlamaForCausalLM(cfg).to(torch.bfloat16), max_slots=1, max_model_len=64)
    assert runner.model.native is None and "q/k norms" in runner.native_reason
    assert runner.execute(ForwardBatch([0], [[1, 2, 3]], [0], [1])).shape == (1, 512)
    off = _smol_runner(torch.bfloat16, native=False)
    assert off.model.native is None and off.native_reason == "turned off"


def test_a_failed_build_falls_back_with_a_reason(tmp_path, monkeypatch):
    saved = dict(build._state)
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.setattr(build, "_registered", lambda: False)
    build._state.clear()
    try:
        assert build.load(tmp_path) is False
        assert "compiler exited" in build.native_reason()
        assert not any(tmp_path.glob("*.so"))  # nothing half-built left to load later
    finally:
        build._state.clear()
        build._state.update(saved)
