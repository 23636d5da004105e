"""Rotary position embedding (RoPE), computed in float32 whatever the model dtype.

Inverse frequencies follow transformers' `modeling_rope_utils` ("default", "linear", "llama3") so logits match
Hugging Face bit-for-bit in fp32. HF rotates in the model dtype; we rotate in fp32 and cast back, which is at least as
accurate in bf16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.models.config import ModelConfig


def inv_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """(head_dim // 2,) float32 inverse frequencies, scaled per `cfg.rope_scaling`."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    if s["rope_type"] == "linear":
        return inv_freq / float(s["factor"])
    # llama3: long wavelengths divided by `factor`, short ones kept, a smooth blend between
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("inv_freq", inv_frequencies(cfg), persistent=False)

    def reset(self, device: torch.device | str) -> None:
        """Recompute the buffer on `device` (after building the model on the meta device)."""
        self.inv_freq = inv_frequencies(self.cfg).to(device)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, S) int -> cos, sin (B, S, 1, D) float32, broadcastable over heads of (B, S, H, D)."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq  # (B, S, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # (B, S, 1, D)
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, D) any dtype; rotated in float32, returned in x's dtype."""
    xf = x.to(torch.float32)
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)
