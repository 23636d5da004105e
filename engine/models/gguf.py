"""GGUF checkpoints (llama.cpp's single-file format): converted once into a bf16 safetensors HF checkpoint in a cache.

`--model path/file.gguf` (or a directory that holds one `.gguf` and no `config.json`) is dequantised by transformers'
own GGUF support (`from_pretrained(dir, gguf_file=name)`, which shows a tqdm bar over the tensors) and written as a
standard Hugging Face directory: `config.json` (both transformers 4.x and 5.x spellings, `hf_compat.portable_config_dict`),
`generation_config.json`, `model.safetensors` in bf16 and the tokenizer files with the chat template. Every runner then
loads that directory as it loads any other checkpoint.

The cache entry is keyed by the GGUF's resolved path, size and mtime, so a later start reuses it (seconds) and a
replaced file is converted again. The directory is written under a temporary name and renamed into place, so an
interrupted conversion never leaves a half-written checkpoint that a later start would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from engine.models.hf_compat import dtype_kwarg, portable_config_dict

log = logging.getLogger("specserve.engine")

CACHE_ENV = "SPECSERVE_CACHE"
_DONE = "specserve-gguf.json"  # written last: its presence marks a complete cache entry
# Keys transformers' GGUF parser puts into the config that describe the source file, not the model.
_DROP_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version")


def default_cache_dir(download_dir: str | os.PathLike | None = None) -> Path:
    """`download_dir` if given, else `$SPECSERVE_CACHE`, else `~/.cache/specserve`."""
    raw = download_dir or os.environ.get(CACHE_ENV) or "~/.cache/specserve"
    return Path(raw).expanduser()


def find_gguf(path: str | os.PathLike) -> Path | None:
    """The GGUF file `path` names: itself if it is a `.gguf` file, the only `.gguf` in a directory without
    `config.json`; None when `path` is not a GGUF model. Several `.gguf` files in one directory is an error."""
    p = Path(path).expanduser()
    if p.is_file():
        return p if p.suffix.lower() == ".gguf" else None
    if p.is_dir() and not (p / "config.json").is_file():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".gguf" and f.is_file())
        if len(files) > 1:
            raise ValueError(f"{p} holds {len(files)} .gguf files ({', '.join(f.name for f in files)}); "
                             "pass the one to serve as --model DIR/FILE.gguf")
        return files[0] if files else None
    return None


def cache_entry(gguf_path: Path, cache_dir: Path) -> Path:
    """`<cache>/gguf/<stem>-<16 hex of sha256(path, size, mtime)>`: one entry per version of the file."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / "gguf" / f"{gguf_path.stem}-{key}"


def is_converted(entry: Path) -> bool:
    return (entry / _DONE).is_file() and (entry / "config.json").is_file() and (entry / "model.safetensors").is_file()


def convert_gguf(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                 dtype: torch.dtype = torch.bfloat16) -> Path:
    """Return the HF checkpoint directory for `gguf_path`, converting it into the cache first if needed."""
    src = Path(gguf_path).expanduser().resolve()
    entry = cache_entry(src, default_cache_dir(cache_dir))
    if is_converted(entry):
        log.info("GGUF %s: using the converted checkpoint in cache %s", src.name, entry)
        return entry
    log.info("GGUF %s (%.0f MB): converting once to a %s safetensors checkpoint in cache %s",
             src, src.stat().st_size / 1e6, str(dtype).removeprefix("torch."), entry)
    t0 = time.monotonic()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_checkpoint(src, tmp, dtype)
        shutil.rmtree(entry, ignore_errors=True)  # a stale, incomplete entry (no marker) from an older attempt
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("GGUF %s: converted in %.1fs; later starts load %s", src.name, time.monotonic() - t0, entry)
    return entry


_SPECIAL_KEYS = {"bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_id": "tokenizer.ggml.eos_token_id",
                 "pad_token_id": "tokenizer.ggml.padding_token_id"}


def gguf_special_token_ids(path: Path) -> dict[str, int]:
    """bos/eos/pad ids as the GGUF file records them (`tokenizer.ggml.*_token_id`).

    transformers 4.48-4.57's GGUF tokenizer conversion reads SmolLM2's eos as id 1 (`<|im_start|>`) although the file
    says 2 (`<|im_end|>`); 5.x reads 2. Taking them from the file makes the converted checkpoint the same everywhere.
    """
    import gguf

    fields = gguf.GGUFReader(str(path)).fields
    out = {}
    for key, field_name in _SPECIAL_KEYS.items():
        field = fields.get(field_name)
        if field is not None:
            out[key] = int(field.contents())
    return out


def _write_checkpoint(src: Path, out: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.mkdir(parents=True)
    d, name = str(src.parent), src.name
    log.info("GGUF %s: reading the tokenizer", name)
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=name)
    special = gguf_special_token_ids(src)
    for attr, token_id in special.items():  # 4.48-4.57 mis-read eos as <|im_start|>; the file's own ids win
        setattr(tokenizer, attr.removesuffix("_id"), tokenizer.convert_ids_to_tokens(token_id))
    log.info("GGUF %s: dequantising the tensors", name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, **dtype_kwarg(torch.float32))
    cfg = model.config.to_dict()
    for k in _DROP_KEYS:
        cfg.pop(k, None)
    cfg["architectures"] = [type(model).__name__]
    cfg.update(special)
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("torch_dtype", None)
    (out / "config.json").write_text(json.dumps(portable_config_dict(cfg), indent=2, sort_keys=True))
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    # Tied checkpoints carry no lm_head.weight (it is the embedding); safetensors refuses shared storage anyway.
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
             if not (cfg.get("tie_word_embeddings") and k == "lm_head.weight")}
    log.info("GGUF %s: writing %d tensors (%.0f MB)", name, len(state),
             sum(v.numel() * v.element_size() for v in state.values()) / 1e6)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out))
    (out / _DONE).write_text(json.dumps({"source": str(src), "size": src.stat().st_size,
                                         "mtime_ns": src.stat().st_mtime_ns, "dtype": cfg["dtype"]}, indent=2))
