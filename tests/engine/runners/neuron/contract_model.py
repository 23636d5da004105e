"""What both library fakes share: a torch model over a static slot KV cache, and a recorder of the library calls made.

`SlotModel` is NOT a Neuron library: it is the project's torch model (engine/models/llama.py) run in float32 on CPU over
a cache `[layers, slots, kv_heads, max_len, head_dim]`, so a fake that routes a call the way the real library does
produces logits a test can compare with the torch runner's. Each fake (`fake_transformers_neuronx.py`,
`fake_nxdi.py`) puts its library's host-side code on top: argument handling, padding, routing, graphs compiled.

`CALLS` records every call the runners make into a fake's public API as (qualified name, args, kwargs), so
test_real_signatures.py can bind each one against the signatures recorded from the real sources.
"""

from __future__ import annotations

import functools

import torch

from engine.models.kv_cache import KVCache
from engine.models.llama import StepInputs
from engine.models.loader import load_model

CALLS: list[tuple[str, tuple, dict]] = []


class ContractViolation(AssertionError):
    """The caller broke a rule the real library enforces with an assert (the real message is quoted where it has one)."""


def recorded(qualname: str):
    """Decorator: append (qualname, args including self/cls, kwargs) to CALLS on every call."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            CALLS.append((qualname, args, dict(kwargs)))
            return fn(*args, **kwargs)
        inner.__qualified__ = qualname
        return inner
    return wrap


class SlotModel:
    """Runs rows of tokens at explicit positions in explicit slots of one static cache."""

    def __init__(self, path: str, num_slots: int, max_len: int):
        self.model = load_model(path, dtype=torch.float32, device="cpu").eval()
        self.cfg = self.model.config
        self.num_slots, self.max_len = num_slots, max_len
        self.cache = KVCache.allocate(self.cfg, num_slots, max_len, dtype=torch.float32, device="cpu")

    def run(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor,
            prior: torch.Tensor | None = None) -> torch.Tensor:
        """ids, pos (R, S) integer; slots (R,) -> float32 logits (R, S, V). Writes the K/V of every token first.

        prior None: causal over cache positions (a token at p sees 0..p), the rule of transformers-neuronx graphs,
        whose masks come from cache_ids. prior (R, L) 0/1: NxD Inference's prior-KV mask: a token sees cache position j
        when prior[r, j] == 1, plus the row's own earlier active tokens (model_base.py `_create_simple_attn_mask`,
        `_create_spec_attn_mask`). NOTE: where prior covers an active position the real graph attends to the stale
        value and the new one; this model sees only the new one (both differ from the correct answer)."""
        if ids.dim() != 2 or ids.shape != pos.shape or slots.shape != (ids.shape[0],):
            raise ContractViolation(f"shapes: ids {tuple(ids.shape)}, positions {tuple(pos.shape)}, "
                                    f"slots {tuple(slots.shape)}")
        if slots.min() < 0 or slots.max() >= self.num_slots:
            raise IndexError(f"slot id outside the compiled batch of {self.num_slots}: {slots.tolist()}")
        if pos.min() < 0 or pos.max() >= self.max_len:
            raise IndexError(f"position outside the KV cache of {self.max_len}: {pos.tolist()}")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise IndexError("token id outside the vocabulary")
        R, S = ids.shape  # noqa: N806
        pos = pos.long()
        L = int(pos.max()) + 1 if prior is None else max(int(pos.max()) + 1, prior.shape[1])  # noqa: N806
        if prior is None:
            mask = StepInputs.causal_mask(pos, L)  # (R, 1, S, L)
        else:
            cache_pos = torch.arange(L)
            p = torch.zeros(R, L, dtype=torch.bool)
            p[:, :prior.shape[1]] = prior.bool()
            active = pos[:, :, None] == cache_pos[None, None, :]  # (R, S, L): where each active token is written
            # token i sees the positions of active tokens 0..i of its row
            seen = torch.cumsum(active.long(), dim=1).bool()  # (R, S, L)
            is_active = active.any(1, keepdim=True)  # (R, 1, L)
            mask = ((p[:, None, :] & ~is_active) | seen)[:, None]  # (R, 1, S, L)
        inp = StepInputs(input_ids=ids.long(), positions=pos, slot_ids=slots.long(), ctx_len=L, attn_mask=mask)
        with torch.inference_mode():
            return self.model(inp, self.cache).float().view(R, S, -1)
