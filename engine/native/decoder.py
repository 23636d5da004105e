"""`NativeDecoder`: the decoder layers of a bf16 `LlamaForCausalLM` on CPU through `specserve_native::decoder_layers`.

It holds no weights of its own: the lists it passes to the op are the model's fp32 norm weights and the packed
weights of its `NativeLinear` layers (engine/native/linear.py), gathered once. What it computes, and why the result is
the same bits in any batch, is in decoder_layers.cpp.
"""

from __future__ import annotations

import torch

from engine.models.config import ModelConfig
from engine.native.linear import NativeLinear


def unsupported_reason(model) -> str | None:
    """None when `model` (a LlamaForCausalLM after keep_residual_fp32 and packing) can run natively, else why not."""
    cfg: ModelConfig = model.config
    if cfg.qk_norm:
        return "q/k norms (Qwen3) are not covered"
    if cfg.head_dim % 32 or cfg.head_dim > 128 or cfg.hidden_size % 16 or cfg.intermediate_size % 16:
        return f"shapes not covered (head_dim {cfg.head_dim}, hidden {cfg.hidden_size})"
    if model.residual_dtype != torch.float32:
        return "needs bf16 weights with the fp32 residual stream"
    for layer in model.layers:
        lins = (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
        if not all(isinstance(m, NativeLinear) for m in lins):
            return "linear layers are not packed for the native kernels"
    if not isinstance(model.lm_head, NativeLinear):
        return "the head is not packed for the native kernels"
    return None


class NativeDecoder:
    def __init__(self, model):
        cfg: ModelConfig = model.config
        self.cfg = cfg
        self.norms: list[torch.Tensor] = []
        self.packed: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        self.n_out: list[int] = []
        empty = torch.empty(0)
        for layer in model.layers:
            self.norms += [layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach()]
            for lin in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                        layer.mlp.down_proj):
                self.packed.append(lin.packed)
                self.biases.append(empty if lin.bias is None else lin.bias)
                self.n_out.append(lin.out_features)
        self.inv_freq = model.rotary.inv_freq.float().contiguous()

    def __call__(self, x: torch.Tensor, slot_ids: torch.Tensor, positions: torch.Tensor, cache) -> None:
        """x (T, hidden) fp32 residual stream, updated in place; slot_ids / positions (T,) int64 per token."""
        cfg = self.cfg
        torch.ops.specserve_native.decoder_layers(
            x, slot_ids, positions, self.inv_freq, cache.k, cache.v, self.norms, self.packed, self.biases,
            self.n_out, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps, cache.scratch_pos)
