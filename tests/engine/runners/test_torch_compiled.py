"""The compiled decode/verify path (engine/models/compiled.py): same greedy tokens as eager in fp32, padding rows and
batch buckets never leak into real rows, and any failure degrades to eager with one log line (issue 20)."""

from __future__ import annotations

import logging
import os
import tempfile

import pytest
import torch

import engine.models.compiled as compiled_mod
from engine.models import LlamaForCausalLM, ModelConfig
from engine.models.compiled import batch_buckets
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner

VOCAB, MAX_LEN, SLOTS = 61, 40, 4
CFG = ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1,
                  num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-5, tie_word_embeddings=True)
PROMPTS = [[3, 14, 15, 9, 2, 6], [5, 35, 8], [9, 7, 9, 3, 2, 3, 8, 4, 6]]


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(CFG)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def cache_dir() -> str:
    """One persistent compile cache per machine: the first run compiles (~40 s of CPU), later runs load the graphs
    from it, which is the restart behaviour `torch_compile_cache_dir` promises."""
    return os.environ.get("SPECSERVE_TEST_COMPILE_CACHE", os.path.join(tempfile.gettempdir(), "specserve-test-inductor"))


def _greedy(runner: TorchRunner, steps: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Prefill three rows, then `steps` batched decode steps (rows at different positions), then one verify-shaped
    step (3 tokens per row, all logits). Returns each row's tokens and every step's logits."""
    out = [[int(runner.execute(ForwardBatch([s], [p], [0], [1])).argmax())] for s, p in enumerate(PROMPTS)]
    pos = [len(p) for p in PROMPTS]
    all_logits = []
    for _ in range(steps):
        logits = runner.execute(ForwardBatch([0, 1, 2], [[t[-1]] for t in out], list(pos), [1, 1, 1]))
        all_logits.append(logits)
        for row, tok in zip(out, logits.argmax(-1).tolist(), strict=True):
            row.append(tok)
        pos = [p + 1 for p in pos]
    verify = runner.execute(ForwardBatch([0, 1, 2], [[t[-1], 1, 2] for t in out], list(pos), [3, 3, 3]))
    all_logits.append(verify)
    return out, all_logits


def test_compiled_greedy_equals_eager_in_fp32(cache_dir, caplog):
    eager = TorchRunner(_model(), max_slots=SLOTS, max_model_len=MAX_LEN)
    caplog.set_level(logging.INFO, logger="specserve.engine")
    comp = TorchRunner(_model(), max_slots=SLOTS, max_model_len=MAX_LEN, compile=True, compile_cache_dir=cache_dir)
    want_tokens, want_logits = _greedy(eager, 8)
    got_tokens, got_logits = _greedy(comp, 8)
    assert comp.compiled is not None and comp.compiled.failed is None
    assert {(4, 1), (4, 3)} <= comp.compiled.compiled_shapes  # 3 rows ran in the 4-row bucket, decode and verify
    assert got_tokens == want_tokens
    for g, w in zip(got_logits, want_logits, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert any("torch.compile: compiling" in r.message for r in caplog.records)  # the progress line


def test_compiled_batch_one_and_non_contiguous_slots(cache_dir):
    eager = TorchRunner(_model(), max_slots=SLOTS, max_model_len=MAX_LEN)
    comp = TorchRunner(_model(), max_slots=SLOTS, max_model_len=MAX_LEN, compile=True, compile_cache_dir=cache_dir)
    for r in (eager, comp):
        r.execute(ForwardBatch([3], [PROMPTS[0]], [0], [1]))
        r.execute(ForwardBatch([1], [PROMPTS[2]], [0], [1]))
    n0, n2 = len(PROMPTS[0]), len(PROMPTS[2])
    for batch in (ForwardBatch([3], [[7]], [n0], [1]), ForwardBatch([3, 1], [[8], [9]], [n0 + 1, n2], [1, 1])):
        torch.testing.assert_close(comp.execute(batch), eager.execute(batch), atol=1e-4, rtol=1e-4)
    assert (1, 1) in comp.compiled.compiled_shapes and (2, 1) in comp.compiled.compiled_shapes
    # padding rows wrote only the scratch position of slot 0, which was never used
    assert comp.cache.k[:, 0, :, :MAX_LEN].abs().sum() == 0


def test_compile_error_degrades_to_eager_with_one_log_line(caplog):
    eager = TorchRunner(_model(), max_slots=SLOTS, max_model_len=MAX_LEN)
    comp = TorchRunner(_model(), max_slots=SLOTS, max_model_len=MAX_LEN, compile=True)

    def broken(*args):
        raise RuntimeError("inductor: no C++ compiler found\nsecond line")

    comp.compiled._fn = broken
    caplog.set_level(logging.INFO, logger="specserve.engine")
    want, _ = _greedy(eager, 3)
    got, _ = _greedy(comp, 3)
    assert got == want and comp.compiled.failed.startswith("RuntimeError: inductor: no C++ compiler found")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "stays eager" in warnings[0].message and "second line" not in warnings[0].message


def test_old_torch_stays_eager(monkeypatch, caplog):
    monkeypatch.setattr(compiled_mod, "torch_version", lambda: (2, 6))
    caplog.set_level(logging.WARNING, logger="specserve.engine")
    comp = TorchRunner(_model(), max_slots=SLOTS, max_model_len=MAX_LEN, compile=True)
    assert comp.compiled.failed is not None and "older than 2.7" in comp.compiled.failed
    assert len(caplog.records) == 1
    logits = comp.execute(ForwardBatch([0], [PROMPTS[0]], [0], [1]))
    assert logits.shape == (1, VOCAB) and torch.isfinite(logits).all()


def test_batch_buckets():
    assert batch_buckets(16) == (1, 2, 4, 8, 16)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(1) == (1,)
