"""`NativeLinear`: a bf16 CPU linear layer over `specserve_native::linear_bf16` (see linear_bf16.cpp).

Measured against oneDNN's prepacked bf16 linear on SmolLM2-135M's shapes (1 thread, AVX512-BF16 Zen 4,
docs/bench/native_linear.json): 1.6-2.9x at 2 rows (the batch-1 decode step), 0.96-1.6x at 16, 1.02-1.23x at 64;
outputs agree with oneDNN's to bf16 rounding and are independent of the row count by construction.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 64  # outputs per packed group; must match kGroup in linear_bf16.cpp


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) bf16, K even -> (ceil(N/64), K/2, 64, 2) bf16: entry [g, p, j, s] = W[64 g + j, 2 p + s], zero-padded."""
    n, k = weight.shape
    groups = -(-n // GROUP)
    padded = weight.new_zeros(groups * GROUP, k)
    padded[:n] = weight
    return padded.view(groups, GROUP, k // 2, 2).permute(0, 2, 1, 3).contiguous()


class NativeLinear(nn.Module):
    """Inference-only replacement for a bf16 CPU `nn.Linear` with an even `in_features`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed = pack_weight(linear.weight.detach())
            self.bias = None if linear.bias is None else linear.bias.detach().float().contiguous()

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        w = linear.weight
        return w.dtype == torch.bfloat16 and w.device.type == "cpu" and w.shape[1] % 2 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        out = torch.ops.specserve_native.linear_bf16(x.reshape(-1, self.in_features).contiguous(), self.packed,
                                                      self.bias, self.out_features)  # (prod(lead), out)
        return out.view(*lead, self.out_features)
