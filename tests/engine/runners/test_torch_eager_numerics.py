"""The eager torch step's numerics with low-precision weights: fp32 residual stream and norms, and a tied head packed
for oneDNN that still gives the unpacked head's logits (issue 20)."""

from __future__ import annotations

import pytest
import torch

import engine.native as native_kernels
from engine.models import LlamaForCausalLM, ModelConfig
from engine.models.cpu_linear import PackedLinear, packing_available
from engine.native.linear import NativeLinear
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner

VOCAB, MAX_LEN = 97, 48
CFG = ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=True)


def _model(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(CFG)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model.to(dtype=dtype).eval()


def _logits(runner: TorchRunner, toks: list[int]) -> torch.Tensor:
    """Prefill the first half, then decode the rest one token at a time: (len(toks), vocab) float32."""
    half = len(toks) // 2
    out = [runner.execute(ForwardBatch([0], [toks[:half]], [0], [half]))]
    out += [runner.execute(ForwardBatch([0], [[toks[p]]], [p], [1])) for p in range(half, len(toks))]
    return torch.cat(out)


TOKS = torch.randint(0, VOCAB, (24,), generator=torch.Generator().manual_seed(3)).tolist()


def test_bf16_weights_run_an_fp32_residual_stream():
    runner = TorchRunner(_model(torch.bfloat16), max_slots=1, max_model_len=MAX_LEN, pack_weights=False)
    seen: list[torch.dtype] = []
    runner.model.layers[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    runner.model.layers[0].mlp.gate_up_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    runner.execute(ForwardBatch([0], [TOKS[:5]], [0], [1]))
    assert seen == [torch.bfloat16, torch.float32]  # matmul input in the weights' dtype, residual out in fp32
    assert runner.model.norm.weight.dtype == torch.float32 and runner.cache.k.dtype == torch.bfloat16


def test_fp32_residual_tracks_fp32_closer_than_a_bf16_stream():
    # Reference: the same bf16-rounded weights computed entirely in fp32, so only activation rounding differs.
    ref = _logits(TorchRunner(_model(torch.bfloat16).float(), max_slots=1, max_model_len=MAX_LEN), TOKS)
    fp32_stream = _logits(TorchRunner(_model(torch.bfloat16), max_slots=1, max_model_len=MAX_LEN), TOKS)
    # The old behaviour: everything in bf16 (built by hand: the runner always keeps the stream in fp32 now).
    plain = TorchRunner(_model(torch.bfloat16), max_slots=1, max_model_len=MAX_LEN, pack_weights=False)
    plain.model.residual_dtype = None
    for m in plain.model.modules():
        if hasattr(m, "out_dtype"):
            m.weight.data, m.out_dtype = m.weight.data.bfloat16(), None
    bf16_stream = _logits(plain, TOKS)
    err_new, err_old = (fp32_stream - ref).abs().mean(), (bf16_stream - ref).abs().mean()
    assert err_new < 0.9 * err_old, (err_new, err_old)
    assert (fp32_stream.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_fp32_weights_are_unchanged_by_the_residual_policy():
    model = _model(torch.float32)
    TorchRunner(model, max_slots=1, max_model_len=MAX_LEN)
    assert model.residual_dtype is None and all(getattr(m, "out_dtype", None) is None for m in model.modules())


@pytest.mark.parametrize("native", [False, True], ids=["onednn", "native"])
def test_tied_head_is_packed_and_matches_the_unpacked_head(native):
    if not native and not packing_available():
        pytest.skip("this torch build has no usable oneDNN packed linear")
    if native and not native_kernels.load():
        pytest.skip(f"native kernels unavailable here: {native_kernels.native_reason()}")
    packed = TorchRunner(_model(torch.bfloat16), max_slots=1, max_model_len=MAX_LEN, native=native)
    plain = TorchRunner(_model(torch.bfloat16), max_slots=1, max_model_len=MAX_LEN, pack_weights=False)
    kind = NativeLinear if native else PackedLinear
    assert isinstance(packed.model.lm_head, kind) and packed.packed_linears == 4 * CFG.num_layers + 1
    assert isinstance(packed.model.embed_tokens.weight, torch.nn.Parameter)  # lookups keep the plain table
    got, want = _logits(packed, TOKS), _logits(plain, TOKS)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=0)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
