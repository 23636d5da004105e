"""Batch-invariant attention for the torch CPU runner: a row's output does not depend on its pass's shape.

Why: a K+1-token verify, a 1-token decode, a batch of 1 and a batch of 64 reach SDPA with different shapes, and its CPU
kernel picks its blocking (query and key splits, the vector tail of every reduction) from those shapes, so the same
query attending the same keys comes out a rounding apart. bf16 near-ties then flip greedy tokens: speculation, batch
mates and prefill chunking changed the text (issue 15; 26 of 30 code prompts identical with speculation on main).

How (each step measured row-invariant on this CPU, oneDNN/MKL, 1 and 2 threads; tests/engine/models/
test_batch_invariance.py checks the whole model):
- the context length L is a multiple of `KEY_BLOCK` (the runner pads it; the cache has room) and every padded key is
  masked, so longer contexts only append whole blocks of exact zeros to each reduction over keys;
- scores are an fp32 GEMM over bf16-exact inputs (the products are exact in fp32); the GEMM's reduction over the head
  dimension is the same for every row once the query rows number at least `MIN_QUERY_ROWS` (small-M GEMMs take a
  different kernel), so fewer query rows are zero-padded up to it; scale and mask ride in the same GEMM (baddbmm);
- softmax in fp32 over the padded row (masked entries are exp(-inf) = 0 exactly);
- probabilities rounded to the value dtype, then a bf16 GEMM with V (oneDNN's bf16 GEMMs are row-invariant at every M).
This matches SDPA's own bf16 numerics (fp32 scores and softmax, bf16 probabilities times V).
"""

from __future__ import annotations

import torch

KEY_BLOCK = 64  # the runner rounds the context length up to a multiple of this
MIN_QUERY_ROWS = 8  # fp32 GEMMs with fewer rows take a kernel whose reduction order differs


def pad_context(length: int, capacity: int) -> int:
    """The context length to attend over: `length` rounded up to a whole key block, within the cache's `capacity`."""
    return min(-(-length // KEY_BLOCK) * KEY_BLOCK, capacity)


def additive_mask(mask: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, 1, M, L) bool (True = attend) -> (B * kv_heads, M_pad, L) float32 of 0 / -inf, M_pad = max(M,
    MIN_QUERY_ROWS). Built once per step for every layer; padded query rows attend everything (their output is
    dropped), so no softmax row is all -inf."""
    B, _, M, L = mask.shape  # noqa: N806
    add = torch.zeros(B, kv_heads, max(M, MIN_QUERY_ROWS), L, dtype=torch.float32, device=mask.device)
    add[:, :, :M].masked_fill_(~mask, float("-inf"))
    return add.view(B * kv_heads, -1, L)


def invariant_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask_add: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """q (B, H, M, D); keys/values (B, H, L, D), L a multiple of KEY_BLOCK; mask_add (B * H, M_pad, L) from
    `additive_mask`. Returns (B, H, M, D) in the values' dtype."""
    B, H, M, D = q.shape  # noqa: N806
    m_pad, L = mask_add.shape[1], keys.shape[2]  # noqa: N806
    if m_pad != M:  # (B, H, M_pad, D) with zero rows; NOTE: F.pad measured ~4 ms here (constant_pad_nd), a copy 5 us
        qf = q.new_zeros((B, H, m_pad, D), dtype=torch.float32)
        qf[:, :, :M] = q
    else:
        qf = q.float()
    kf = keys.float().view(B * H, L, D)  # a contiguous copy of the (strided) cache slice
    # one GEMM for scores * scale + mask; equal to matmul-then-scale bit for bit (checked on this CPU)
    scores = torch.baddbmm(mask_add, qf.view(B * H, m_pad, D), kf.transpose(1, 2), alpha=scale)  # (B*H, M_pad, L)
    probs = torch.softmax(scores[:, :M], dim=-1).to(values.dtype).view(B, H, M, L)
    return torch.matmul(probs, values)  # (B, H, M, D)
