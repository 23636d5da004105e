"""Batch invariance of the torch CPU runner in bf16: a row's logits are the same bits whatever shares its pass.

The property the engine's greedy identity rests on (issue 15): a token decoded alone, decoded beside 15 other rows,
verified as the first of K+1 tokens, or reached through a chunked prefill gives bit-identical logits. The model is a
random bf16 Llama with the real default model's layer shapes (SmolLM2-135M: hidden 576, 9 heads over 3 KV heads of 64,
MLP 1536 — the down projection's K = 1536 is where a one-row GEMM sums differently), and contexts on both sides of
SDPA's 512-key split. The negative control runs the same comparisons through SDPA (the
path used before) and requires that some differ: the property is not true by accident of the shapes chosen.
"""

from __future__ import annotations

import pytest
import torch

import engine.native as native_kernels
from engine.models.config import ModelConfig
from engine.models.llama import LlamaForCausalLM
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner, cpu_has_fast_bf16

pytestmark = pytest.mark.skipif(not cpu_has_fast_bf16(), reason="bf16 invariance is a property of the CPU's bf16 path")

VOCAB, SLOTS, MAX_LEN = 512, 16, 720
PROMPT_LENS = [37, 600, 5, 300, 129, 64, 511, 513, 90, 250, 17, 700, 400, 63, 1, 200]  # slot i's prompt length


def _runner(invariant: bool, native: bool = False) -> TorchRunner:
    torch.manual_seed(0)
    cfg = ModelConfig(model_type="llama", vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_layers=2,
                      num_heads=9, num_kv_heads=3, head_dim=64, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    return TorchRunner(model.to(torch.bfloat16), max_slots=SLOTS, max_model_len=MAX_LEN, batch_invariant=invariant,
                       native=native)


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (n,), generator=gen).tolist() for n in PROMPT_LENS]


def _comparisons(runner: TorchRunner) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(what, logits alone, logits in another pass shape) for decode-in-batch, verify and chunked prefill."""
    prompts = _prompts()
    for slot, ids in enumerate(prompts):  # every slot prefilled in one chunk
        runner.execute(ForwardBatch(slot_ids=[slot], token_ids=[ids], start_pos=[0], num_logits=[1]))
    nxt = [7 + s for s in range(SLOTS)]
    pos = [len(p) for p in prompts]
    out = []
    # 1. one decode token, alone vs beside 15 rows at other positions
    alone = [runner.execute(ForwardBatch(slot_ids=[s], token_ids=[[nxt[s]]], start_pos=[pos[s]], num_logits=[1]))
             for s in range(SLOTS)]
    batch = runner.execute(ForwardBatch(slot_ids=list(range(SLOTS)), token_ids=[[t] for t in nxt], start_pos=pos,
                                        num_logits=[1] * SLOTS))
    out += [(f"decode slot {s} alone vs batch of {SLOTS}", alone[s][0], batch[s]) for s in range(SLOTS)]
    # 2. the same token as the first of a 5-token verify row (4 drafts), beside other verify and decode rows; then
    #    each draft position against sequential decodes of the same tokens
    drafts = [[(11 * s + j) % VOCAB for j in range(4)] for s in range(SLOTS)]
    rows = [[nxt[s]] + (drafts[s] if s % 2 == 0 else []) for s in range(SLOTS)]
    verify = runner.execute(ForwardBatch(slot_ids=list(range(SLOTS)), token_ids=rows, start_pos=pos,
                                         num_logits=[len(r) for r in rows]))
    offsets = [0]
    for r in rows:
        offsets.append(offsets[-1] + len(r))
    for s in range(0, SLOTS, 2):
        out.append((f"verify slot {s} first token vs decode alone", alone[s][0], verify[offsets[s]]))
        for j, tok in enumerate(drafts[s][:3]):  # decode draft j alone at its position, after the verify wrote K/V
            seq = runner.execute(ForwardBatch(slot_ids=[s], token_ids=[[tok]], start_pos=[pos[s] + 1 + j],
                                              num_logits=[1]))
            out.append((f"verify slot {s} draft {j} vs sequential decode", seq[0], verify[offsets[s] + 1 + j]))
    # 3. a prompt prefilled in three chunks vs in one (slot 1, 600 tokens): the last token's logits
    ids = prompts[1]
    whole = runner.execute(ForwardBatch(slot_ids=[1], token_ids=[ids], start_pos=[0], num_logits=[1]))
    for a, b in ((0, 250), (250, 520)):
        runner.execute(ForwardBatch(slot_ids=[1], token_ids=[ids[a:b]], start_pos=[a], num_logits=[0]))
    chunked = runner.execute(ForwardBatch(slot_ids=[1, 3], token_ids=[ids[520:], [5, 6]], start_pos=[520, pos[3]],
                                          num_logits=[1, 1]))
    out.append(("prefill in three chunks (beside another row) vs one", whole[0], chunked[0]))
    return out


@pytest.mark.parametrize("native", [False, True], ids=["aten", "native"])
@pytest.mark.parametrize("threads", [1, 2])
def test_bf16_logits_do_not_depend_on_the_pass(threads, native):
    """Both invariant implementations: invariant_attention.py over ATen ops, and the one-call native decoder."""
    if native and not native_kernels.load():
        pytest.skip(f"native kernels unavailable here: {native_kernels.native_reason()}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runner = _runner(invariant=True, native=native)
        assert runner.batch_invariant and (runner.model.native is not None) == native
        diffs = [(what, (a - b).abs().max().item()) for what, a, b in _comparisons(runner)]
    finally:
        torch.set_num_threads(old)
    assert len(diffs) > 30
    assert [d for d in diffs if d[1] != 0.0] == []


def test_sdpa_path_is_not_invariant_negative_control():
    runner = _runner(invariant=False)
    diffs = [(what, (a - b).abs().max().item()) for what, a, b in _comparisons(runner)]
    assert sum(d[1] != 0.0 for d in diffs) >= 3, diffs


def test_invariant_by_default_for_bf16_on_cpu_only():
    torch.manual_seed(0)
    cfg = ModelConfig(model_type="llama", vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=32)
    assert TorchRunner(LlamaForCausalLM(cfg).to(torch.bfloat16), max_slots=1, max_model_len=70).batch_invariant
    assert not TorchRunner(LlamaForCausalLM(cfg), max_slots=1, max_model_len=70).batch_invariant  # fp32
    runner = TorchRunner(LlamaForCausalLM(cfg).to(torch.bfloat16), max_slots=1, max_model_len=70)
    assert runner.cache.max_len == 128  # room for whole key blocks: 70 rounded up to 2 x 64


def test_invariant_attention_computes_attention():
    """Against SDPA on the same bf16 inputs, causal verify rows and a padded context: equal to bf16 rounding."""
    import torch.nn.functional as F

    from engine.models.invariant_attention import additive_mask, invariant_attention, pad_context

    gen = torch.Generator().manual_seed(3)
    B, H, S, D, real = 3, 2, 5, 64, 90  # noqa: N806
    L = pad_context(real, 1024)  # noqa: N806
    q, k, v = (torch.randn(B, H, S, D, generator=gen).bfloat16(), torch.randn(B, H, L, D, generator=gen).bfloat16(),
               torch.randn(B, H, L, D, generator=gen).bfloat16())
    pos = torch.arange(real - S, real)
    mask = (torch.arange(L)[None, :] <= pos[:, None])[None, None].expand(B, 1, S, L)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=D ** -0.5).float()
    got = invariant_attention(q, k, v, additive_mask(mask, H), D ** -0.5).float()
    assert L == 128 and got.shape == (B, H, S, D)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_batch_invariant_setting_reaches_the_runner(tiny_pair):
    from tests.helpers.engines import make_engine

    target, _ = tiny_pair
    assert make_engine(target, dtype="bfloat16").runner.batch_invariant  # auto
    assert not make_engine(target, dtype="bfloat16", batch_invariant="off").runner.batch_invariant
    assert not make_engine(target, dtype="float32").runner.batch_invariant
    with pytest.raises(ValueError, match="exact only for bfloat16 on CPU"):
        make_engine(target, dtype="float32", batch_invariant="on")
