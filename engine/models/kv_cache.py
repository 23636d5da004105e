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


@torch.library.custom_op("specserve::kv_write", mutates_args=("k_layer", "v_layer"))
def kv_write(k_layer: torch.Tensor, v_layer: torch.Tensor, slot_ids: torch.Tensor, positions: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor) -> None:
    """k_layer/v_layer (slots, KVH, T, D) <- k/v (B, S, KVH, D) at [slot_ids[b], :, positions[b, s]], in place.

    NOTE: an opaque op for torch.compile. Traced as plain indexing into a view of the cache, the write was
    functionalized into a copy of the whole cache per layer (a 30-layer SmolLM2 step ran at 560 ms instead of ~20)."""
    row_slot = slot_ids[:, None]  # (B, 1) broadcast against positions (B, S)
    k_layer[row_slot, :, positions] = k
    v_layer[row_slot, :, positions] = v


@dataclass
class KVCache:
    k: torch.Tensor  # (layers, slots, kv_heads, max_len + 1, head_dim)
    v: torch.Tensor  # (layers, slots, kv_heads, max_len + 1, head_dim)
    write_as_op: bool = False  # True under torch.compile: `write` goes through the opaque custom op

    def write(self, layer: int, slot_ids: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        """Store one layer's new K/V (B, S, KVH, D) at (slot_ids (B,), positions (B, S))."""
        if self.write_as_op:
            kv_write(self.k[layer], self.v[layer], slot_ids, positions, k, v)
            return
        row_slot = slot_ids[:, None]  # eager: two index_put_ without the custom-op dispatch cost
        self.k[layer][row_slot, :, positions] = k
        self.v[layer][row_slot, :, positions] = v

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
