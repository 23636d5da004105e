"""The bundled demo model pair: a small Llama target and a distilled one-layer draft, trained on the Python standard
library's source by `tools/train_demo_pair.py` (see README.md in this directory for the measured figures).

`specserve serve` with no `--model` serves this pair offline under the name `SERVED_NAME`. Each directory is a
standalone Hugging Face checkpoint (config.json, generation_config.json, model.safetensors in bf16, tokenizer.json,
tokenizer_config.json with the chat template), loadable with `transformers.AutoModelForCausalLM` / `AutoTokenizer`
or with `engine.models.loader.load_model` / `engine.models.tokenizer.load_tokenizer`. Both share one tokenizer.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR: Path = Path(__file__).resolve().parent
SERVED_NAME = "specserve-demo"

__all__ = ["DEMO_DIR", "SERVED_NAME", "draft_dir", "target_dir"]


def _checked(name: str) -> Path:
    d = DEMO_DIR / name
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"bundled demo {name} model missing in {d}: the package data was not installed "
            "(rebuild with `python tools/train_demo_pair.py --out engine/demo_pair`, or reinstall specserve)")
    return d


def target_dir() -> Path:
    """Directory of the demo target model (HF format)."""
    return _checked("target")


def draft_dir() -> Path:
    """Directory of the demo draft model (HF format, same tokenizer as the target)."""
    return _checked("draft")
