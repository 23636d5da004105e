"""Executable model of a Neuron continuous-batching model, shared by the two library fakes.

It is NOT a Neuron library: it is the project's torch model (engine/models/llama.py) over a static slot KV cache, run in
float32 on CPU, with the shape rules the real graphs impose checked on every call. The library fakes
(`fake_transformers_neuronx.py`, `fake_nxdi.py`) put each library's documented call signatures and hazards on top.
"""

from __future__ import annotations

import torch

from engine.models.kv_cache import KVCache
from engine.models.llama import StepInputs
from engine.models.loader import load_model


class ContractViolation(AssertionError):
    """The caller broke a rule the real library enforces (or silently mishandles)."""


class SlotModel:
    """Runs rows of tokens at explicit positions in explicit slots of one static cache."""

    def __init__(self, path: str, num_slots: int, max_len: int):
        self.model = load_model(path, dtype=torch.float32, device="cpu").eval()
        self.cfg = self.model.config
        self.num_slots, self.max_len = num_slots, max_len
        self.cache = KVCache.allocate(self.cfg, num_slots, max_len, dtype=torch.float32, device="cpu")

    def run(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """ids, pos (R, S); slots (R,) distinct -> float32 logits (R, S, V); writes K/V of every token."""
        if ids.dim() != 2 or ids.shape != pos.shape or slots.shape != (ids.shape[0],):
            raise ContractViolation(f"shapes: ids {tuple(ids.shape)}, positions {tuple(pos.shape)}, "
                                    f"slots {tuple(slots.shape)}")
        if len(set(slots.tolist())) != slots.numel():
            raise ContractViolation(f"slot ids must be distinct, got {slots.tolist()}")
        if slots.min() < 0 or slots.max() >= self.num_slots:
            raise ContractViolation(f"slot id outside the compiled batch of {self.num_slots}: {slots.tolist()}")
        if pos.min() < 0 or pos.max() >= self.max_len:
            raise ContractViolation(f"position outside n_positions {self.max_len}: {pos.tolist()}")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ContractViolation("token id outside the vocabulary")
        R, S = ids.shape  # noqa: N806
        pos = pos.long()
        L = int(pos.max()) + 1  # noqa: N806
        inp = StepInputs(input_ids=ids.long(), positions=pos, slot_ids=slots.long(), ctx_len=L,
                         attn_mask=StepInputs.causal_mask(pos, L))
        with torch.inference_mode():
            return self.model(inp, self.cache).float().view(R, S, -1)
