"""Parity with Hugging Face transformers (fp32, random init): full prefill, token-by-token decode through the KV
cache, and chunked prefill, for every supported architecture. Checkpoints go through save_pretrained + our loader."""

from __future__ import annotations

import os

import pytest
import torch
import transformers

from engine.models.loader import load_model
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner

VOCAB, T, TOL = 160, 24, 1e-4
DEVICE = os.environ.get("SPECSERVE_TEST_DEVICE", "cpu")  # "cuda" runs the same checks on a GPU
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=256, rms_norm_eps=1e-5)

# name -> (config class, model class, extra config); classes by name, looked up when a case runs, so an architecture
# the installed transformers lacks (Qwen3 arrived in 4.51; the SDK 2.25 container has 4.48) skips that case alone.
CASES = {
    "llama-gqa-untied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama3-rope-tied": ("LlamaConfig", "LlamaForCausalLM",
                         dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=50000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "llama-bias-mha": ("LlamaConfig", "LlamaForCausalLM",
                       dict(num_key_value_heads=4, attention_bias=True, mlp_bias=True)),
    "mistral-gqa": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=4096)),
    "qwen2-tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3-headdim": ("Qwen3Config", "Qwen3ForCausalLM",
                      dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=False)),
}


def _classes(name: str) -> tuple[type, type, dict]:
    cfg_name, model_name, extra = CASES[name]
    if not hasattr(transformers, cfg_name):
        pytest.skip(f"transformers {transformers.__version__} has no {cfg_name} (Qwen3 needs >= 4.51)")
    return getattr(transformers, cfg_name), getattr(transformers, model_name), extra


def _hf_model(name: str) -> transformers.PreTrainedModel:
    cfg_cls, model_cls, extra = _classes(name)
    torch.manual_seed(1234)
    model = model_cls(cfg_cls(**COMMON, **extra)).eval()
    with torch.no_grad():  # peaked logits, non-trivial norms and biases, so a wrong mapping shows
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    """(HF reference logits for one prompt, the prompt, our model loaded from the saved checkpoint)."""
    name = request.param
    hf = _hf_model(name)
    out = tmp_path_factory.mktemp(name)
    shard = {"max_shard_size": "40KB"} if name == "llama-gqa-untied" else {}  # one sharded checkpoint
    hf.save_pretrained(str(out), **shard)
    if shard:
        assert (out / "model.safetensors.index.json").is_file()
    ids = torch.randint(0, VOCAB, (1, T), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = hf(ids).logits[0].float()  # (T, vocab)
    return ref, ids[0].tolist(), load_model(out, device=DEVICE)


def _runner(model) -> TorchRunner:
    return TorchRunner(model, max_slots=3, max_model_len=64)


def test_full_prefill_matches_hf(pair):
    ref, ids, model = pair
    out = _runner(model).execute(ForwardBatch([1], [ids], [0], [T])).cpu()
    assert out.dtype == torch.float32 and out.shape == (T, VOCAB)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_token_by_token_decode_matches_hf(pair):
    ref, ids, model = pair
    r = _runner(model)
    got = [r.execute(ForwardBatch([2], [ids[:4]], [0], [1]))]
    for p in range(4, T):
        got.append(r.execute(ForwardBatch([2], [[ids[p]]], [p], [1])))
    torch.testing.assert_close(torch.cat(got).cpu(), ref[3:], atol=TOL, rtol=0)


def test_chunked_prefill_matches_one_shot(pair):
    ref, ids, model = pair
    r = _runner(model)
    got, start = [], 0
    for n in (5, 1, 7, 3, 8):
        got.append(r.execute(ForwardBatch([0], [ids[start:start + n]], [start], [n])))
        start += n
    assert start == T
    torch.testing.assert_close(torch.cat(got).cpu(), ref, atol=TOL, rtol=0)


def test_different_prompt_gives_different_logits(pair):
    """Guards the parity tests against comparing a tensor with itself."""
    ref, ids, model = pair
    other = [(t + 1) % VOCAB for t in ids]
    out = _runner(model).execute(ForwardBatch([0], [other], [0], [1])).cpu()
    assert (out[0] - ref[-1]).abs().max() > 1e-2
