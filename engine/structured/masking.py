"""llguidance's packed token bitmask -> boolean rows, and applying them to logits.

A bitmask row is `[ceil(V / 32)]` int32: bit b of word w allows token 32 * w + b. llguidance's own torch helper
compiles its kernel with `torch.compile`, which on CPU means an inductor C++ build at first use; unpacking on the host
with numpy costs microseconds per row instead, and the boolean rows move to the logits' device.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

assert sys.byteorder == "little", "unpack_bitmask reads the int32 words' bytes in little-endian order"

def unpack_bitmask(packed: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`[N, W]` int32 -> `[N, vocab_size]` bool (True = allowed); tokens past 32 * W are disallowed.

    numpy's unpackbits over the little-endian bytes of the words: bit b of word w is byte 4w + b // 8, bit b % 8
    (x86 and ARM are little-endian), about 10x faster than shifting int32 tensors.
    """
    n, w = packed.shape
    raw = packed.contiguous().cpu().numpy().view(np.uint8)  # (N, 4 W)
    bits = np.unpackbits(raw, axis=-1, bitorder="little")  # (N, 32 W) uint8 0/1
    allowed = torch.from_numpy(bits).view(torch.bool)
    if w * 32 >= vocab_size:
        return allowed[:, :vocab_size]
    pad = torch.zeros(n, vocab_size - w * 32, dtype=torch.bool)
    return torch.cat([allowed, pad], dim=1)


def apply_allowed(logits: torch.Tensor, row_idx: list[int], allowed: torch.Tensor) -> None:
    """Set disallowed tokens of `logits[row_idx]` to -inf, in place. `allowed` `[len(row_idx), V]` bool.

    A row the other processors already emptied of every allowed token (e.g. min_tokens masking the only token the
    grammar allows) keeps the grammar's choice: uniform over the allowed tokens. The rule is a function of the row
    alone, so draft and target rows get the same distribution and speculation stays lossless.
    Two passes over the rows (fill, max); a batch where every row is constrained is filled in place, no gather.
    """
    if not row_idx:
        return
    allowed = allowed.to(logits.device)
    whole = len(row_idx) == logits.shape[0] and row_idx == list(range(len(row_idx)))
    index = None if whole else torch.tensor(row_idx, device=logits.device)
    sub = logits if whole else logits[index]  # (R, V)
    sub.masked_fill_(allowed.logical_not(), -math.inf)
    empty = torch.isneginf(sub.amax(dim=-1))  # (R,)
    if bool(empty.any()):
        rows = empty & allowed.any(dim=-1)
        sub[rows] = torch.where(allowed[rows], 0.0, -math.inf)
    if not whole:
        logits[index] = sub
