"""Static slot KV cache: one K and one V tensor `[layers, slots, kv_heads, max_len + 1, head_dim]`.

Each running sequence owns a slot; position p of a slot holds that sequence's K/V for its token at p. Writing a position
again simply overwrites it, so rolling back rejected drafts needs no copy (the engine moves its counter back).

The extra last position (`scratch_pos == max_len`) is a write sink for padding tokens: rows of one step have different
lengths, and padded tokens still run through the model. Their K/V land in the scratch position, which the attention
mask never admits (attention spans at most positions `[0, max_len)`), so padding can never corrupt real entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.models.config import ModelConfig


@dataclass
class KVCache:
    k: torch.Tensor  # (layers, slots, kv_heads, max_len + 1, head_dim)
    v: torch.Tensor  # (layers, slots, kv_heads, max_len + 1, head_dim)

    @classmethod
    def allocate(cls, cfg: ModelConfig, max_slots: int, max_len: int, *, dtype: torch.dtype,
                 device: torch.device | str) -> KVCache:
        shape = (cfg.num_layers, max_slots, cfg.num_kv_heads, max_len + 1, cfg.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_slots(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        """Real positions per slot (the scratch position excluded)."""
        return self.k.shape[3] - 1

    @property
    def scratch_pos(self) -> int:
        return self.k.shape[3] - 1

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
