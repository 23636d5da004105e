"""The project's compact Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over a static slot KV cache.

References: Hugging Face transformers `modeling_llama.py` / `modeling_qwen3.py` (the numerics we match in fp32) and
gpt-fast's `model.py` (a static cache written at `input_pos`).

One forward runs a batch of rows; row b carries S new tokens for KV slot `slots[b]` at positions `positions[b]`. Rows are
right-padded to a common S; padded tokens carry the cache's scratch position, so their K/V writes land where no query
ever looks (see `kv_cache.py`). A new token at position p of slot s attends to positions 0..p of slot s, which covers
the earlier cache entries and the tokens of its own chunk (prefill chunks, speculative verify).

Fused projections: q/k/v are one matmul and gate/up another (the loader concatenates HF's separate weights), which
halves the number of GEMM calls at batch 1, where per-call overhead matters.

Grouped-query attention without copying K/V: the G = heads / kv_heads query heads that share a KV head are folded into
the query-length axis, `(B, H, S, D) -> (B, KVH, G*S, D)`, and SDPA runs as multi-head attention over KVH heads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from engine.models.config import ModelConfig
from engine.models.invariant_attention import additive_mask, invariant_attention
from engine.models.kv_cache import KVCache
from engine.models.rope import RotaryEmbedding, apply_rope


@dataclass
class StepInputs:
    """Tensors for one forward over padded rows (built by the runner with a few torch ops, no per-token Python)."""

    input_ids: torch.Tensor  # (B, S) long
    positions: torch.Tensor  # (B, S) long; padded tokens = cache.scratch_pos
    slot_ids: torch.Tensor  # (B,) long: the KV slot of each row
    ctx_len: int  # L: queries attend within cache positions [0, L); L = max(last real position) + 1 <= max_len
    attn_mask: torch.Tensor | None = None  # (B, 1, S, L) bool, True = attend; None when every query sees all L
    logits_idx: torch.Tensor | None = None  # (N,) indices into the flattened (B*S) tokens; None = every token
    slot_range: tuple[int, int] | None = None  # (first, B) when slot_ids == first..first+B-1: cache reads are views

    @staticmethod
    def causal_mask(positions: torch.Tensor, ctx_len: int) -> torch.Tensor:
        """(B, S) positions -> (B, 1, S, L) bool: token at p sees cache positions 0..p."""
        cache_pos = torch.arange(ctx_len, device=positions.device)
        return (cache_pos[None, None, :] <= positions[:, :, None])[:, None]


# NOTE: cuDNN attention (preferred for bf16 on Hopper) builds a plan per shape, and the context length changes every
# decode step: measured 150 ms per verify pass on an H200. Flash (no mask) and memory-efficient (mask) kernels do not.
_CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class RMSNorm(nn.Module):
    """RMSNorm as one fused op. It normalises in float32 like HF; for bf16 it also scales by the weight in float32
    before rounding (HF rounds first), which is slightly more accurate and one kernel instead of eight (launch-bound
    decode on a GPU measured 2x slower with the eight).

    `out_dtype` (set by `LlamaForCausalLM.keep_residual_fp32`): the norm reads the fp32 residual stream with an fp32
    weight and hands the next matmul its input in the weights' dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.out_dtype: torch.dtype | None = None  # None: the input's dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_dtype is None:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return F.rms_norm(x.to(self.weight.dtype), self.weight.shape, self.weight, self.eps).to(self.out_dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.scale = cfg.head_dim ** -0.5
        self.batch_invariant = False  # set by LlamaForCausalLM.make_batch_invariant

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache, inp: StepInputs,
                mask: torch.Tensor | None) -> torch.Tensor:
        B, S, _ = x.shape  # noqa: N806
        H, KVH, D = self.num_heads, self.num_kv_heads, self.head_dim  # noqa: N806
        qkv = self.qkv_proj(x).view(B, S, H + 2 * KVH, D)  # (B, S, H + 2*KVH, D)
        qk, v = qkv[:, :, :H + KVH], qkv[:, :, H + KVH:]  # (B, S, H + KVH, D), (B, S, KVH, D)
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :, :H]), self.k_norm(qk[:, :, H:])), dim=2)
        qk = apply_rope(qk, cos, sin)  # q and k heads rotated in one pass
        q, k = qk[:, :, :H], qk[:, :, H:]  # (B, S, H, D), (B, S, KVH, D)

        # Write this chunk's K/V first, so the reads below see the chunk's own earlier tokens.
        cache.write(self.layer_idx, inp.slot_ids, inp.positions, k, v)
        k_layer, v_layer = cache.k[self.layer_idx], cache.v[self.layer_idx]  # (slots, KVH, T, D)
        L = inp.ctx_len if inp.attn_mask is None else inp.attn_mask.shape[-1]  # noqa: N806  (symbolic when compiled)
        if inp.slot_range is not None:  # contiguous slots: a view, no copy
            first, n = inp.slot_range
            keys, values = k_layer[first:first + n, :, :L], v_layer[first:first + n, :, :L]  # (B, KVH, L, D)
        else:
            keys = k_layer[:, :, :L].index_select(0, inp.slot_ids)  # (B, KVH, L, D), copies only L positions
            values = v_layer[:, :, :L].index_select(0, inp.slot_ids)

        G = H // KVH  # noqa: N806
        q = q.transpose(1, 2).reshape(B, KVH, G * S, D)  # (B, KVH, G*S, D): heads sharing a KV head, folded
        if self.batch_invariant:  # mask: (B * KVH, M_pad, L) additive fp32, see invariant_attention.py
            out = invariant_attention(q, keys, values, mask, self.scale)  # (B, KVH, G*S, D)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)
        # NOTE: reshape, not view: CUDA SDPA may return a non-contiguous layout
        out = out.reshape(B, H, S, D).transpose(1, 2).reshape(B, S, H * D)  # (B, S, H*D)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.intermediate = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache, inp, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, inp, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    """Parameter names: `embed_tokens`, `layers.{i}.{self_attn.qkv_proj,...}`, `norm`, `lm_head` (see loader.py)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rotary = RotaryEmbedding(cfg)
        self.residual_dtype: torch.dtype | None = None  # None: the weights' dtype (see keep_residual_fp32)
        self.batch_invariant = False  # see make_batch_invariant
        self.native = None  # a NativeDecoder (engine/native/decoder.py) that runs the layers in one call; see use_native
        self.head_token_ids: torch.Tensor | None = None  # (N,): a draft head over these ids only (draft_vocab.py)

    def make_batch_invariant(self) -> None:
        """Attend through `invariant_attention`, so a row's logits do not depend on how many rows, queries or keys
        share its pass. The runner must then pass a mask on every step with a context length from `pad_context`."""
        self.batch_invariant = True
        for layer in self.layers:
            layer.self_attn.batch_invariant = True

    def keep_residual_fp32(self) -> None:
        """Run the residual stream and the norms in float32 over low-precision weights (DESIGN.md, near-ties).

        The norm weights become fp32 (a few KB); every norm hands its matmul a bf16/fp16 input; each block's output
        (weights' dtype) is added into the fp32 stream. Logits stay the head's output, widened by the runner. A no-op
        for fp32 weights."""
        wdtype = self.embed_tokens.weight.dtype
        if wdtype == torch.float32:
            return
        self.residual_dtype = torch.float32
        for m in self.modules():
            if isinstance(m, RMSNorm):
                m.weight.data = m.weight.data.float()
                m.out_dtype = wdtype

    def use_native(self, decoder) -> None:
        """Run the decoder layers through `decoder` (a NativeDecoder); the mask and context length of StepInputs are
        then unused: the native attention reads each token's own slot up to its own position."""
        self.native = decoder

    def forward(self, inp: StepInputs, cache: KVCache) -> torch.Tensor:
        """Run the rows, update the cache; return logits (N, vocab) in the model dtype for `inp.logits_idx`
        ((N, len(head_token_ids)) for a reduced head)."""
        if self.native is not None:
            return self._forward_native(inp, cache)
        B, S = inp.input_ids.shape  # noqa: N806
        x = self.embed_tokens(inp.input_ids)  # (B, S, hidden)
        if self.residual_dtype is not None:
            x = x.to(self.residual_dtype)
        cos, sin = self.rotary(inp.positions)  # (B, S, 1, D) float32
        mask = inp.attn_mask
        group = self.config.num_heads // self.config.num_kv_heads
        if mask is not None and group > 1:
            mask = mask.repeat(1, 1, group, 1)  # (B, 1, G*S, L), matching the folded query heads
        if self.batch_invariant:
            mask = additive_mask(mask, self.config.num_kv_heads)  # (B*KVH, M_pad, L) fp32, once for every layer
        with sdpa_kernel(_CUDA_SDPA_BACKENDS) if x.is_cuda else contextlib.nullcontext():
            for layer in self.layers:
                x = layer(x, cos, sin, cache, inp, mask)
        x = x.reshape(B * S, -1)  # (B*S, hidden)
        if inp.logits_idx is not None:
            x = x.index_select(0, inp.logits_idx)  # (N, hidden): the LM head runs only where logits are needed
        return self.lm_head(self.norm(x))  # (N, vocab)

    def _forward_native(self, inp: StepInputs, cache: KVCache) -> torch.Tensor:
        B, S = inp.input_ids.shape  # noqa: N806
        x = self.embed_tokens(inp.input_ids.reshape(-1)).float()  # (B*S, hidden) fp32 residual stream
        slots = inp.slot_ids[:, None].expand(B, S).reshape(-1).contiguous()  # (B*S,) the KV slot of every token
        self.native(x, slots, inp.positions.reshape(-1).contiguous(), cache)
        if inp.logits_idx is not None:
            x = x.index_select(0, inp.logits_idx)  # (N, hidden)
        h = torch.ops.specserve_native.rmsnorm_bf16(x, self.norm.weight, self.norm.eps)  # (N, hidden) bf16
        return self.lm_head(h)  # (N, vocab)
