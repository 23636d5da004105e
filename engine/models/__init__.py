"""The project's compact Llama-family model: config, model, static slot KV cache, loader, tokenizer."""

from engine.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, UnsupportedModelError
from engine.models.kv_cache import KVCache
from engine.models.llama import LlamaForCausalLM, StepInputs
from engine.models.loader import ModelNotFoundError, load_model, resolve_model_path
from engine.models.tokenizer import TokenizerNotFoundError, load_tokenizer

__all__ = [
    "SUPPORTED_MODEL_TYPES", "KVCache", "LlamaForCausalLM", "ModelConfig", "ModelNotFoundError", "StepInputs",
    "TokenizerNotFoundError", "UnsupportedModelError", "load_model", "load_tokenizer", "resolve_model_path",
]
