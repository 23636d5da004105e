"""TorchRunner: batching equals running rows alone, padding and rejected drafts never corrupt KV, bf16 tracks fp32,
and the loader/tokenizer fail with messages that name what they looked for."""

from __future__ import annotations

import json
import os

import pytest
import torch

from engine.models import (
    KVCache,
    LlamaForCausalLM,
    ModelConfig,
    ModelNotFoundError,
    TokenizerNotFoundError,
    UnsupportedModelError,
    load_model,
    load_tokenizer,
)
from engine.runners.base import ForwardBatch, Runner
from engine.runners.torch_runner import TorchRunner, resolve_dtype
from tests.helpers.tiny_models import build_llama, build_tokenizer

VOCAB, MAX_LEN, SLOTS = 97, 48, 4
DEVICE = os.environ.get("SPECSERVE_TEST_DEVICE", "cpu")  # "cuda" runs the same checks on a GPU
CFG = ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5)


def _model(dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(CFG)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model.to(dtype=dtype, device=DEVICE).eval()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return _model()


def _runner(model) -> TorchRunner:
    return TorchRunner(model, max_slots=SLOTS, max_model_len=MAX_LEN)


def _tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _one(r: TorchRunner, slot: int, toks: list[int], start: int, nl: int) -> torch.Tensor:
    return r.execute(ForwardBatch([slot], [toks], [start], [nl]))


def test_runner_protocol_and_info(model):
    r = _runner(model)
    assert isinstance(r, Runner)
    info = r.info()
    assert (info.vocab_size, info.max_slots, info.max_model_len) == (VOCAB, SLOTS, MAX_LEN)
    assert (info.allowed_k, info.backend, info.dtype) == (None, "torch", "float32")
    assert info.device.startswith(DEVICE)
    assert r.cache.k.shape == (2, SLOTS, 2, MAX_LEN + 1, 16)  # [layers, slots, kv_heads, max_len + 1, head_dim]
    r.warmup()
    r.release_slot(0)


def test_batched_rows_equal_rows_alone(model):
    """Rows with different lengths, positions, slots and num_logits in one call == each row in its own call."""
    a, b, c = _tokens(10, 1), _tokens(12, 2), _tokens(9, 3)
    # History per slot, then this step's rows: a decode (1 token), a verify (1 + 3 drafts, all logits), a prefill chunk.
    history = {3: (a[:9], 0), 0: (b[:8], 0), 2: ([], 0)}
    rows = [(3, a[9:], 9, 1), (0, b[8:], 8, 4), (2, c, 0, 2)]

    batched = _runner(model)
    for slot, (toks, start) in history.items():
        if toks:
            _one(batched, slot, toks, start, 0)
    out = batched.execute(ForwardBatch([s for s, *_ in rows], [t for _, t, _, _ in rows],
                                       [p for *_, p, _ in rows], [n for *_, n in rows]))
    assert out.shape == (1 + 4 + 2, VOCAB)

    alone = []
    for slot, toks, start, nl in rows:
        r = _runner(model)
        hist, _ = history[slot]
        if hist:
            _one(r, slot, hist, 0, 0)
        alone.append(_one(r, slot, toks, start, nl))
    torch.testing.assert_close(out, torch.cat(alone), atol=1e-5, rtol=0)


def test_noncontiguous_slots_and_decode_at_different_positions(model):
    """Several decode rows at different positions (masked path) over non-contiguous slots."""
    seqs = {0: _tokens(5, 4), 2: _tokens(11, 5), 3: _tokens(7, 6)}
    r = _runner(model)
    for slot, toks in seqs.items():
        _one(r, slot, toks[:-1], 0, 0)
    out = r.execute(ForwardBatch([2, 0, 3], [[seqs[2][-1]], [seqs[0][-1]], [seqs[3][-1]]], [10, 4, 6], [1, 1, 1]))
    ref = [_one(_runner(model), s, seqs[s], 0, 1) for s in (2, 0, 3)]
    torch.testing.assert_close(out, torch.cat(ref), atol=1e-5, rtol=0)


def test_padding_never_corrupts_kv(model):
    """A 1-token row batched with an 8-token row is padded by 7; its slot must not change beyond its one position."""
    a, b = _tokens(16, 7), _tokens(8, 8)
    r, clean = _runner(model), _runner(model)
    _one(r, 0, a[:10], 0, 0)
    _one(clean, 0, a[:10], 0, 0)
    r.execute(ForwardBatch([0, 1], [[a[10]], b], [10, 0], [1, 1]))
    _one(clean, 0, [a[10]], 10, 1)
    real = slice(0, MAX_LEN)  # the scratch position (MAX_LEN) is excluded: padding is allowed to land there
    torch.testing.assert_close(r.cache.k[:, 0, :, real], clean.cache.k[:, 0, :, real], atol=1e-6, rtol=0)
    torch.testing.assert_close(r.cache.v[:, 0, :, real], clean.cache.v[:, 0, :, real], atol=1e-6, rtol=0)
    assert r.cache.k[:, 0, :, 11:MAX_LEN].abs().sum() == 0  # nothing written past the real token
    assert r.cache.k[:, 2:, :, :MAX_LEN].abs().sum() == 0  # untouched slots stay empty
    # Decoding on continues to match a clean run.
    for p in range(11, 16):
        torch.testing.assert_close(_one(r, 0, [a[p]], p, 1), _one(clean, 0, [a[p]], p, 1), atol=1e-5, rtol=0)


def test_overwritten_rejected_drafts_match_clean_run(model):
    """Write drafts at positions 8..11, then rewrite other tokens at 9..11 (one draft accepted): same as never drafted."""
    seq = _tokens(14, 9)
    drafts = [(t + 5) % VOCAB for t in seq[9:12]]
    r, clean = _runner(model), _runner(model)
    _one(r, 1, seq[:8], 0, 0)
    _one(clean, 1, seq[:8], 0, 0)
    _one(r, 1, [seq[8], *drafts], 8, 4)  # verify pass; drafts get rejected
    accepted = _one(r, 1, seq[9:12], 9, 3)  # the engine rewinds to 9 and runs the real tokens
    ref = _one(clean, 1, seq[8:12], 8, 3)
    torch.testing.assert_close(accepted, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(_one(r, 1, seq[12:14], 12, 2), _one(clean, 1, seq[12:14], 12, 2), atol=1e-5, rtol=0)


def test_logits_selection_and_empty(model):
    r = _runner(model)
    toks = _tokens(6, 10)
    full = _one(r, 0, toks, 0, 6)
    torch.testing.assert_close(_one(_runner(model), 0, toks, 0, 2), full[-2:], atol=1e-5, rtol=0)
    assert _one(_runner(model), 0, toks, 0, 0).shape == (0, VOCAB)
    assert r.execute(ForwardBatch([], [], [], [])).shape == (0, VOCAB)


def test_bfloat16_close_to_float32():
    toks = _tokens(20, 11)
    ref = _one(_runner(_model(torch.float32)), 0, toks, 0, 20).cpu()
    r16 = _runner(_model(torch.bfloat16))
    assert r16.info().dtype == "bfloat16" and r16.cache.k.dtype == torch.bfloat16
    out = torch.cat([_one(r16, 0, toks[:12], 0, 12), *[_one(r16, 0, [toks[p]], p, 1) for p in range(12, 20)]]).cpu()
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_rejects_invalid_batches(model):
    r = _runner(model)
    with pytest.raises(ValueError, match="positions"):
        _one(r, 0, [1, 2], MAX_LEN - 1, 1)
    with pytest.raises(ValueError, match="slot"):
        _one(r, SLOTS, [1], 0, 1)
    with pytest.raises(ValueError, match="distinct"):
        r.execute(ForwardBatch([1, 1], [[1], [2]], [0, 0], [1, 1]))
    with pytest.raises(ValueError, match="num_logits"):
        _one(r, 0, [1], 0, 2)


def test_from_pretrained_with_tokenizer(tmp_path):
    build_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    build_llama(tmp_path, len(tok), layers=1, tie=True)
    r = TorchRunner.from_pretrained(tmp_path, max_slots=2, max_model_len=32, dtype="float32", device=DEVICE)
    r.warmup()
    ids = tok("def add(a, b):")["input_ids"]
    assert r.execute(ForwardBatch([1], [ids], [0], [1])).shape == (1, len(tok))
    assert resolve_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")


def test_loader_errors_name_what_they_looked_for(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(ModelNotFoundError, match="no/such/dir"):
        load_model(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(ModelNotFoundError, match="specserve-test/does-not-exist-7f3a"):
        load_model("specserve-test/does-not-exist-7f3a")
    with pytest.raises(TokenizerNotFoundError, match="empty"):
        load_tokenizer(tmp_path / "empty")


def test_config_errors(tmp_path):
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(UnsupportedModelError, match="llama, mistral, qwen2, qwen3"):
        ModelConfig.from_dict({**base, "model_type": "gpt2"})
    mistral = ModelConfig.from_dict({**base, "model_type": "mistral", "sliding_window": 32})
    mistral.check_max_len(32)
    with pytest.raises(UnsupportedModelError, match="sliding"):
        mistral.check_max_len(33)
    qwen2 = ModelConfig.from_dict({**base, "model_type": "qwen2", "sliding_window": 4, "use_sliding_window": False})
    assert qwen2.sliding_window is None and qwen2.qkv_bias and not qwen2.o_bias
    with pytest.raises(UnsupportedModelError, match="rope type 'yarn'"):
        ModelConfig.from_dict({**base, "model_type": "llama", "rope_scaling": {"type": "yarn", "factor": 2.0}})
    (tmp_path / "config.json").write_text(json.dumps({**base, "model_type": "llama", "eos_token_id": 1}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 5]}))
    assert ModelConfig.from_dir(tmp_path).eos_token_ids == (1, 5)


def test_kv_cache_layout():
    cache = KVCache.allocate(CFG, 3, 10, dtype=torch.float32, device="cpu")
    assert cache.k.shape == (2, 3, 2, 11, 16) and (cache.max_len, cache.scratch_pos, cache.max_slots) == (10, 10, 3)


@pytest.mark.skipif(DEVICE != "cpu", reason="oneDNN weight packing is CPU-only")
def test_cpu_bf16_packed_weights_match_plain_linear():
    from engine.models.cpu_linear import packing_available

    toks = _tokens(9, 12)
    packed = TorchRunner(_model(torch.bfloat16), max_slots=1, max_model_len=MAX_LEN, native=False)
    plain = TorchRunner(_model(torch.bfloat16), max_slots=1, max_model_len=MAX_LEN, pack_weights=False)
    if not packing_available():
        pytest.skip("this torch build has no usable oneDNN packed linear")
    assert packed.packed_linears == 4 * CFG.num_layers + 1 and plain.packed_linears == 0
    out = torch.cat([_one(packed, 0, toks[:6], 0, 6), _one(packed, 0, toks[6:], 6, 3)])
    ref = torch.cat([_one(plain, 0, toks[:6], 0, 6), _one(plain, 0, toks[6:], 6, 3)])
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=0)
