"""`ModelConfig`: the fields of a Hugging Face `config.json` that the Llama-family model needs, validated when built.

Supported `model_type`s and what differs between them is one table (`_ARCHS`), not a chain of ifs:

- llama   (Llama 2/3/3.1+: GQA, optional `rope_scaling` "llama3"/"linear", optional attention/MLP bias)
- mistral (Llama + sliding window; served only when the window covers the whole context)
- qwen2   (bias on q/k/v, none on o)
- qwen3   (RMSNorm on q and k per head, `head_dim` independent of hidden/heads)

Both the transformers 4 layout (`rope_theta` + `rope_scaling`) and the transformers 5 layout (`rope_parameters`) parse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its options is not implemented by the compact model."""


@dataclass(frozen=True)
class _Arch:
    qkv_bias: str | bool  # True/False, or the config key that decides it
    o_bias: str | bool
    mlp_bias: str | bool
    qk_norm: bool


_ARCHS: dict[str, _Arch] = {
    "llama": _Arch(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias", qk_norm=False),
    "mistral": _Arch(qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=False),
    "qwen2": _Arch(qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False),
    "qwen3": _Arch(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias=False, qk_norm=True),
}
SUPPORTED_MODEL_TYPES = tuple(_ARCHS)
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # < num_heads: grouped-query attention
    head_dim: int  # may differ from hidden_size // num_heads (Qwen3)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3"|"linear", "factor": ..., ...}; None = plain
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    sliding_window: int | None = None  # effective window (None = full attention); see check_max_len
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    torch_dtype: str | None = None  # the checkpoint's dtype, informational

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise UnsupportedModelError(f"head_dim={self.head_dim} must be even for RoPE")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def check_max_len(self, max_len: int) -> None:
        """Raise if serving `max_len` positions would need attention this model does not implement (sliding window)."""
        if self.sliding_window is not None and self.sliding_window < max_len:
            raise UnsupportedModelError(
                f"{self.model_type} checkpoint uses sliding-window attention (window {self.sliding_window}) and "
                f"sliding windows are not supported; set max_model_len <= {self.sliding_window}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Parse an HF `config.json` dict (transformers 4 or 5 layout)."""
        model_type = d.get("model_type")
        arch = _ARCHS.get(model_type)  # type: ignore[arg-type]
        if arch is None:
            raise UnsupportedModelError(
                f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedModelError(f"hidden_act {act!r} is not supported (only silu)")

        def flag(v: str | bool) -> bool:
            return bool(d.get(v, False)) if isinstance(v, str) else v

        heads = int(d["num_attention_heads"])
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        rope_theta, rope_scaling = _parse_rope(d)
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            model_type=model_type,  # type: ignore[arg-type]
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=flag(arch.qkv_bias),
            o_bias=flag(arch.o_bias),
            mlp_bias=flag(arch.mlp_bias),
            qk_norm=arch.qk_norm,
            sliding_window=_effective_window(d),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=d.get("torch_dtype") or d.get("dtype"),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """Read `config.json` from a checkpoint directory; EOS ids from `generation_config.json` are added."""
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no config.json in model directory {path}")
        d = json.loads(cfg_file.read_text())
        gen = path / "generation_config.json"
        if gen.is_file():
            g_eos = json.loads(gen.read_text()).get("eos_token_id")
            g_ids = g_eos if isinstance(g_eos, list) else ([] if g_eos is None else [g_eos])
            base = d.get("eos_token_id")
            base_ids = base if isinstance(base, list) else ([] if base is None else [base])
            merged = list(dict.fromkeys([*base_ids, *g_ids]))
            if merged:
                d = {**d, "eos_token_id": merged}
        return cls.from_dict(d)


def _parse_rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = d.get("rope_parameters")  # transformers 5
    if isinstance(params, dict) and ("rope_theta" in params or "rope_type" in params):
        theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
        scaling: dict[str, Any] | None = dict(params)
    else:  # transformers 4
        theta = float(d.get("rope_theta", 10000.0))
        scaling = dict(d["rope_scaling"]) if d.get("rope_scaling") else None
    if scaling is not None:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in _ROPE_TYPES:
            raise UnsupportedModelError(f"rope type {rope_type!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
        if scaling.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedModelError("partial_rotary_factor != 1 is not supported")
        if rope_type == "default":
            scaling = None
        else:
            scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "type")} | {"rope_type": rope_type}
    return theta, scaling


def _effective_window(d: dict[str, Any]) -> int | None:
    """The sliding window some layer actually uses, or None."""
    window = d.get("sliding_window")
    if not window:
        return None
    layer_types = d.get("layer_types")
    if layer_types is not None:  # transformers 5 records which layers slide
        return int(window) if "sliding_attention" in layer_types else None
    if "use_sliding_window" in d:  # Qwen2/3 (transformers 4): window present but usually switched off
        return int(window) if d["use_sliding_window"] else None
    return int(window)  # Mistral
