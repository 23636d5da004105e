"""Load a Hugging Face Llama-family checkpoint into `LlamaForCausalLM`.

Accepts a local directory (`config.json` + `model.safetensors`, or shards listed in `model.safetensors.index.json`), a
`.gguf` file (or a directory holding one), converted once into a cache by `engine.models.gguf`, or a hub id resolved
with `huggingface_hub.snapshot_download` (honours `HF_HUB_OFFLINE`). HF's separate q/k/v and gate/up
weights are concatenated into our fused projections; tied checkpoints (no `lm_head.weight`) share the embedding.

The model is built on the meta device and the loaded tensors are assigned, so peak memory is one copy of the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from engine.models.config import ModelConfig
from engine.models.gguf import convert_gguf, find_gguf
from engine.models.llama import LlamaForCausalLM

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


class ModelNotFoundError(FileNotFoundError):
    """Neither a local checkpoint directory nor a resolvable hub id."""


def resolve_model_path(path_or_id: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local checkpoint directory as is; a GGUF file (or a directory holding one) converted into `cache_dir`
    (default `$SPECSERVE_CACHE` or ~/.cache/specserve); otherwise download (or find in the HF cache) the hub repo."""
    p = Path(path_or_id).expanduser()
    gguf_file = find_gguf(p)
    if gguf_file is not None:
        return convert_gguf(gguf_file, cache_dir)
    if p.is_dir():
        return p
    name = str(path_or_id)
    looks_like_id = name.count("/") <= 1 and not name.startswith((".", "/", "~")) and not p.exists()
    if not looks_like_id:
        raise ModelNotFoundError(f"model path {name!r} is not a directory")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id=name, local_files_only=_offline(),
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"],
        )
    except Exception as e:  # offline, unknown repo, gated, network down: all mean "not here"
        raise ModelNotFoundError(
            f"model {name!r} is neither a local directory nor a hub id that could be resolved "
            f"({'offline, not in the local HF cache' if _offline() else type(e).__name__}: {e})") from e
    return Path(local)


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False


def load_hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded), on CPU, in their stored dtype."""
    from safetensors.torch import load_file

    if (path / _SINGLE).is_file():
        return load_file(str(path / _SINGLE))
    if (path / _INDEX).is_file():
        weight_map = json.loads((path / _INDEX).read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_file(str(path / shard)))
        return state
    raise ModelNotFoundError(f"no {_SINGLE} or {_INDEX} in model directory {path}")


def convert_hf_state_dict(cfg: ModelConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF names -> ours: fuse q/k/v and gate/up, drop the `model.` prefix, tie the LM head if it is missing."""
    hf = {k.removeprefix("model."): v for k, v in hf.items()}
    out: dict[str, torch.Tensor] = {
        "embed_tokens.weight": hf.pop("embed_tokens.weight"),
        "norm.weight": hf.pop("norm.weight"),
    }
    lm_head = hf.pop("lm_head.weight", None)
    if lm_head is not None and not cfg.tie_word_embeddings:  # absent = tied to the embedding
        out["lm_head.weight"] = lm_head
    for i in range(cfg.num_layers):
        a, m = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        out[a + "qkv_proj.weight"] = torch.cat([hf.pop(a + f"{n}_proj.weight") for n in "qkv"])
        if cfg.qkv_bias:
            out[a + "qkv_proj.bias"] = torch.cat([hf.pop(a + f"{n}_proj.bias") for n in "qkv"])
        out[a + "o_proj.weight"] = hf.pop(a + "o_proj.weight")
        if cfg.o_bias:
            out[a + "o_proj.bias"] = hf.pop(a + "o_proj.bias")
        if cfg.qk_norm:
            out[a + "q_norm.weight"] = hf.pop(a + "q_norm.weight")
            out[a + "k_norm.weight"] = hf.pop(a + "k_norm.weight")
        out[m + "gate_up_proj.weight"] = torch.cat([hf.pop(m + "gate_proj.weight"), hf.pop(m + "up_proj.weight")])
        if cfg.mlp_bias:
            out[m + "gate_up_proj.bias"] = torch.cat([hf.pop(m + "gate_proj.bias"), hf.pop(m + "up_proj.bias")])
        out[m + "down_proj.weight"] = hf.pop(m + "down_proj.weight")
        if cfg.mlp_bias:
            out[m + "down_proj.bias"] = hf.pop(m + "down_proj.bias")
        for n in ("input_layernorm", "post_attention_layernorm"):
            out[f"layers.{i}.{n}.weight"] = hf.pop(f"layers.{i}.{n}.weight")
    leftover = [k for k in hf if "rotary_emb" not in k]
    if leftover:
        raise ValueError(f"unexpected tensors in checkpoint (not a plain {cfg.model_type} model?): {leftover[:5]}")
    return out


def load_model(path_or_id: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> LlamaForCausalLM:
    """Load a checkpoint directory or hub id; weights cast to `dtype` on `device`; eval mode."""
    path = resolve_model_path(path_or_id)
    cfg = ModelConfig.from_dir(path)
    state = convert_hf_state_dict(cfg, load_hf_state_dict(path))
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    tied = "lm_head.weight" not in state
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if set(missing) != ({"lm_head.weight"} if tied else set()) or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    if tied:  # assign=True replaced embed_tokens.weight; point the head at the loaded embedding
        model.lm_head.weight = model.embed_tokens.weight
    model.rotary.reset(device)
    return model.eval()
