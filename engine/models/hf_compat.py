"""What differs between the transformers versions specserve runs under (4.47 in the oldest Neuron container, 5.x here).

Two things move between those versions and both are used on user paths:

- `from_pretrained(..., dtype=)` exists only from transformers 4.56; older releases take `torch_dtype=` and, given
  `dtype=`, put it into the config and fail serialising it (`TypeError: Object of type dtype is not JSON
  serializable`). `dtype_kwarg(torch.bfloat16)` gives the keyword the installed version understands.
- transformers 5 writes the rope settings only as `rope_parameters` and the dtype only as `dtype`; 4.x reads
  `rope_theta` / `rope_scaling` / `torch_dtype` and silently falls back to rope_theta 10000 without them (NxD
  Inference's `LlamaInferenceConfig` requires `rope_theta` outright). `portable_config_dict` fills both spellings, so a
  checkpoint specserve writes loads with the same positions under every version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

_DTYPE_KEYWORD_SINCE = (4, 56)


def transformers_version(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of `version` ("4.56.0.dev0" -> (4, 56)), by default of the installed transformers."""
    if version is None:
        import transformers

        version = transformers.__version__
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def dtype_kwarg(dtype: torch.dtype | str, *, version: str | None = None) -> dict[str, Any]:
    """`{"dtype": dtype}` on transformers >= 4.56, `{"torch_dtype": dtype}` before; for `from_pretrained`.
    `version` overrides the installed transformers' version (tests)."""
    key = "dtype" if transformers_version(version) >= _DTYPE_KEYWORD_SINCE else "torch_dtype"
    return {key: dtype}


def _dtype_name(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return value


def portable_config_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of an HF `config.json` dict carrying both the 4.x and the 5.x spellings of rope and dtype settings.

    `rope_parameters` (5.x) is `{"rope_type": "default" | "llama3" | ..., "rope_theta": float, ...scaling keys}`;
    4.x keeps `rope_theta` at the top level and the scaling keys (with `rope_type`; `type` before 4.45) in
    `rope_scaling`, which is `None` for plain rope. When the input has `rope_parameters` they win (that is what 5.x
    computes with); otherwise they are built from `rope_theta` / `rope_scaling` (default theta 10000, as 4.x).
    """
    out = dict(cfg)
    params = out.get("rope_parameters")
    if isinstance(params, dict) and params:
        params = dict(params)
        if "rope_theta" in params:
            out["rope_theta"] = params["rope_theta"]
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        scaling = {k: v for k, v in scaling.items() if k != "type"} | {"rope_type": rope_type}  # 4.45+ reads rope_type
        out["rope_scaling"] = None if rope_type == "default" else scaling
    else:
        theta = out.get("rope_theta", 10000.0)
        scaling = out.get("rope_scaling")
        params = {"rope_type": "default", "rope_theta": theta}
        if isinstance(scaling, dict):
            params |= {k: v for k, v in scaling.items() if k != "type"}
            params["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
        out["rope_parameters"] = params
        out["rope_theta"] = theta
        out.setdefault("rope_scaling", None)
    dtype = _dtype_name(out.get("dtype") or out.get("torch_dtype"))
    if dtype is not None:
        out["dtype"] = dtype
        out["torch_dtype"] = dtype
    return out


def make_config_portable(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Rewrite `model_dir/config.json` (as `save_pretrained` of any version wrote it) with both spellings; return it.

    Keys sorted and 2-space indented, like `save_pretrained`, so a rewrite of an already portable file is a no-op.
    """
    path = Path(model_dir) / "config.json"
    cfg = portable_config_dict(json.loads(path.read_text()))
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg
