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
  different kernel), so the query rows are zero-padded up to a multiple of it;
- softmax in fp32 over the padded row (masked entries are exp(-inf) = 0 exactly);
- probabilities rounded to the value dtype, then a bf16 GEMM with V (oneDNN's bf16 GEMMs are row-invariant at every M).
This matches SDPA's own bf16 numerics (fp32 scores and softmax, bf16 probabilities times V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KEY_BLOCK = 64  # the runner rounds the context length up to a multiple of this
MIN_QUERY_ROWS = 8  # fp32 GEMMs with fewer rows take a kernel whose reduction order differs


def pad_context(length: int, capacity: int) -> int:
    """The context length to attend over: `length` rounded up to a whole key block, within the cache's `capacity`."""
    return min(-(-length // KEY_BLOCK) * KEY_BLOCK, capacity)


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, M, L) bool (True = attend) -> (B, 1, M_pad, L) float32 of 0 / -inf, M_pad = M rounded up to a multiple
    of MIN_QUERY_ROWS. Built once per step; the padded query rows attend everything (their output is dropped)."""
    B, _, M, L = mask.shape  # noqa: N806
    pad_rows = -(-M // MIN_QUERY_ROWS) * MIN_QUERY_ROWS - M
    add = torch.zeros(B, 1, M + pad_rows, L, dtype=torch.float32, device=mask.device)
    add[:, :, :M].masked_fill_(~mask, float("-inf"))
    return add


def invariant_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask_add: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """q (B, H, M, D); keys/values (B, H, L, D), L a multiple of KEY_BLOCK; mask_add (B, 1, M_pad, L) from
    `additive_mask`. Returns (B, H, M, D) in the values' dtype."""
    M = q.shape[2]  # noqa: N806
    m_pad = mask_add.shape[2]
    qf = F.pad(q.float(), (0, 0, 0, m_pad - M)) if m_pad != M else q.float()  # (B, H, M_pad, D)
    scores = torch.matmul(qf, keys.float().transpose(-1, -2))  # (B, H, M_pad, L) fp32
    scores = scores.mul_(scale).add_(mask_add)
    probs = torch.softmax(scores[:, :, :M], dim=-1).to(values.dtype)  # (B, H, M, L)
    return torch.matmul(probs, values)  # (B, H, M, D)
