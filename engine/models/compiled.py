"""A compiled decode/verify step for `LlamaForCausalLM`: `torch.compile` per (batch bucket, tokens per row).

Why: an eager decode step is ~35 small ops per layer, each paying Python and dispatcher cost (on the 2-core CPU about
4 us each, ~4-9 ms of a ~20 ms SmolLM2 step; on a GPU hundreds of kernel launches for ~0.06 ms of HBM traffic).
Inductor fuses the elementwise work (RMSNorm, RoPE, SiLU*up, residual adds) into a few C++/Triton kernels and, with
`freezing`, prepacks the weights for oneDNN like `cpu_linear.py` does; on CUDA, mode "reduce-overhead" replays CUDA
graphs.

Shapes (the same bucket model the Neuron runners use): rows are padded to a batch bucket (powers of two up to the KV
slots) and every row carries S tokens (1 = decode, K+1 = verify); each (bucket, S) is one graph. The attended context
length L varies every step, so it is a dynamic dimension (one graph covers all L) rather than a bucket: a bucket per L
range recompiled for ~50 s each on the 2-core CPU. Padding rows write their K/V to slot 0's scratch position, which no
query reads (see kv_cache.py), and attend to position 0 only, so they never produce NaNs.

The KV write is the opaque custom op `specserve::kv_write`; the attention reads slots with `index_select` (a copy of
L positions per row: slot views would specialise the graph on the first slot id).

Anything the compiled path does not cover (prefill chunks, rows longer than `max_tokens`, L < 2, batches above the
largest bucket) runs eagerly. If compiling fails, or torch is older than 2.7, the step logs one line and stays eager.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable

import torch

from engine.models.kv_cache import KVCache
from engine.models.llama import LlamaForCausalLM, StepInputs

log = logging.getLogger("specserve.engine")

MIN_TORCH = (2, 7)


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def batch_buckets(max_slots: int) -> tuple[int, ...]:
    """Powers of two below max_slots, then max_slots itself: 16 -> (1, 2, 4, 8, 16)."""
    out, b = [], 1
    while b < max_slots:
        out.append(b)
        b *= 2
    return (*out, max_slots)


def set_cache_dir(cache_dir: str | None) -> None:
    """Point inductor's persistent caches (FX graphs, generated kernels) at `cache_dir`, so a restart does not
    recompile. Set before the first compile; later changes are ignored by torch."""
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")


def share_weights_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of `model` whose parameters and buffers are the same tensors (no weight memory)."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


class CompiledStep:
    """Runs `model` on a `StepInputs` through a compiled graph when the shapes allow, else returns None.

    `model` must hold plain `nn.Linear` layers (inductor's freezing packs them itself); the runner keeps a separate,
    oneDNN-packed twin for the eager rows."""

    def __init__(self, model: LlamaForCausalLM, cache: KVCache, *, max_slots: int, max_tokens: int = 8,
                 backend: str = "inductor"):
        self.model, self.cache = model, cache
        self.buckets = batch_buckets(max_slots)
        self.max_tokens = max_tokens
        self.device = cache.k.device
        self.group = model.config.num_heads // model.config.num_kv_heads
        self.failed: str | None = None
        self.l_round = 256 if self.device.type == "cuda" else 1
        self.compiled_shapes: set[tuple[int, int]] = set()
        if torch_version() < MIN_TORCH:
            self._fail(f"torch {torch.__version__} is older than {MIN_TORCH[0]}.{MIN_TORCH[1]}")
            return
        options = None
        mode = None
        if backend == "inductor":
            if self.device.type == "cuda":
                mode = "reduce-overhead"  # CUDA graphs
            else:
                options = {"freezing": True}  # weights become constants, prepacked for oneDNN
        self._fn: Callable = torch.compile(self._forward, backend=backend, mode=mode, options=options)

    def _fail(self, why: str) -> None:
        self.failed = why
        log.warning("torch.compile unavailable, the torch runner stays eager: %s", why)

    def covers(self, inp: StepInputs) -> bool:
        B, S = inp.input_ids.shape  # noqa: N806
        return (self.failed is None and S <= self.max_tokens and B <= self.buckets[-1] and inp.ctx_len >= 2)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, slot_ids: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        """ids/positions (Bp, S), slot_ids (Bp,), mask (Bp, 1, S, L) -> logits (Bp*S, vocab)."""
        inp = StepInputs(input_ids=ids, positions=positions, slot_ids=slot_ids, ctx_len=mask.shape[-1],
                         attn_mask=mask)
        return self.model(inp, self.cache)

    def __call__(self, inp: StepInputs) -> torch.Tensor | None:
        """Logits (N, vocab) for `inp.logits_idx` (all B*S tokens when None), or None when not covered/failed."""
        if not self.covers(inp):
            return None
        B, S = inp.input_ids.shape  # noqa: N806
        Bp = next(b for b in self.buckets if b >= B)  # noqa: N806
        L = inp.ctx_len  # noqa: N806
        mask = inp.attn_mask if inp.attn_mask is not None else StepInputs.causal_mask(inp.positions, L)
        ids, positions, slot_ids = inp.input_ids, inp.positions, inp.slot_ids
        if Bp > B:  # padding rows: token 0 at slot 0's scratch position, attending to position 0 only
            pad = Bp - B
            ids = torch.cat([ids, ids.new_zeros(pad, S)])
            positions = torch.cat([positions, positions.new_full((pad, S), self.cache.scratch_pos)])
            slot_ids = torch.cat([slot_ids, slot_ids.new_zeros(pad)])
            pad_mask = torch.zeros(pad, 1, S, L, dtype=torch.bool, device=mask.device)
            pad_mask[..., 0] = True
            mask = torch.cat([mask, pad_mask])
        if self.l_round > 1:  # CUDA graphs record one graph per shape: round L up so a few graphs cover all steps
            Lb = min(-(-L // self.l_round) * self.l_round, self.cache.max_len)  # noqa: N806
            if Lb > L:
                mask = torch.cat([mask, mask.new_zeros(*mask.shape[:3], Lb - L)], dim=3)
        torch._dynamo.mark_dynamic(mask, 3)  # one graph for every context length
        if Bp > 1 and self.device.type == "cpu":  # and, on CPU, one for every batch bucket above 1
            for t in (ids, positions, slot_ids, mask):
                torch._dynamo.mark_dynamic(t, 0)
        shape = (Bp, S)
        first = shape not in self.compiled_shapes
        t0 = time.monotonic()
        if first:
            log.info("torch.compile: compiling the %s step for batch bucket %d, %d token(s) per row (%d graph(s) so "
                     "far); this takes a while once, then comes from the cache", self.device.type, Bp, S,
                     len(self.compiled_shapes))
        self.cache.write_as_op = True
        try:
            logits = self._fn(ids, positions, slot_ids, mask)  # (Bp*S, vocab)
        except Exception as e:  # an unsupported op, a compiler or toolchain error: eager from now on
            self._fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return None
        finally:
            self.cache.write_as_op = False
        if first:
            self.compiled_shapes.add(shape)
            log.info("torch.compile: batch bucket %d, %d token(s) ready in %.1f s", Bp, S, time.monotonic() - t0)
        if inp.logits_idx is not None:
            return logits.index_select(0, inp.logits_idx)
        return logits[:B * S]
