"""Assemble the default draft's checkpoint in the cache: its own layers (in git) + the target's embedding (rebuilt).

The draft is a standard `LlamaForCausalLM` (`draft/config.json`): a few decoder layers of SmolLM2's shape, distilled
from the target by `tools/train_smollm_draft.py`, with the *target's* tied embedding / LM head (49,152 x 576, 57 MB in
bf16), which training kept frozen. Git carries only what training changed (`draft/draft_layers.safetensors`: the
layers and the final norm); the embedding is copied out of the converted target at first start, so the assembled
directory loads on every runner like any other checkpoint. The entry is keyed by the hashes of both inputs. A
`draft_vocab.safetensors` beside the layers (the reduced-vocabulary head's token ids) is copied along.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from engine.models.draft_vocab import DRAFT_VOCAB_FILE

log = logging.getLogger("specserve.engine")

DRAFT_SRC: Path = Path(__file__).resolve().parent / "draft"
LAYERS_FILE = "draft_layers.safetensors"
SHARED = ("model.embed_tokens.weight",)  # tensors taken from the target
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                    "generation_config.json")
_DONE = "specserve-draft.json"


def _digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def assemble_draft(target_dir: Path, cache_dir: Path, src: Path | None = None) -> Path:
    """Directory of the full draft checkpoint, built under `cache_dir/default/` on first use; `src` = the directory
    holding the draft's own tensors and config (default: the bundled `draft/`)."""
    src = Path(src) if src is not None else DRAFT_SRC
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    layers, cfg_file = src / LAYERS_FILE, src / "config.json"
    if not layers.is_file() or not cfg_file.is_file():
        raise FileNotFoundError(f"default draft weights missing in {src} (rebuild with tools/train_smollm_draft.py)")
    inputs = [cfg_file, layers, target_dir / "model.safetensors", *[f for f in [src / DRAFT_VOCAB_FILE] if f.is_file()]]
    entry = cache_dir / "default" / f"draft-{_digest(*inputs)}"
    if (entry / _DONE).is_file():
        return entry
    log.info("default draft: assembling %s from %s and the target's embedding", entry, src)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        state = load_file(str(layers))
        with safe_open(str(target_dir / "model.safetensors"), "pt") as f:
            for name in SHARED:
                state[name] = f.get_tensor(name)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(cfg_file, tmp / "config.json")
        if (src / DRAFT_VOCAB_FILE).is_file():  # the reduced-vocabulary head's token ids (engine/models/draft_vocab.py)
            shutil.copy(src / DRAFT_VOCAB_FILE, tmp / DRAFT_VOCAB_FILE)
        for name in _TOKENIZER_FILES:  # same tokenizer as the target (the builder checks the vocabularies match)
            if (target_dir / name).is_file():
                shutil.copy(target_dir / name, tmp / name)
        (tmp / _DONE).write_text(json.dumps({"layers": str(layers), "target": str(target_dir)}, indent=2))
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
