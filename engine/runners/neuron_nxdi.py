"""`NxdiRunner`: NxD Inference (neuronx-distributed-inference) `NeuronLlamaForCausalLM` behind the `Runner` protocol.

NxD Inference is transformers-neuronx's successor on trn1/inf2 (Neuron SDK 2.21+). The library is imported only inside
functions, so this module imports (and registers `neuron-nxdi`) everywhere.

Calls made (written against the NxD Inference developer guide and `models/model_base.py`; see neuron_common.py for why
every call lists every slot):

    NeuronConfig(tp_degree, batch_size=max_slots, ctx_batch_size=1, tkg_batch_size=max_slots, max_batch_size=max_slots,
                 is_continuous_batching=True, seq_len=max_model_len, max_context_length=largest context bucket,
                 enable_bucketing=True, context_encoding_buckets=[...], token_generation_buckets=[...],
                 speculation_length=m, torch_dtype=...)
    config = LlamaInferenceConfig(neuron_config, load_config=load_pretrained_config(path))
    model = NeuronLlamaForCausalLM(path, config); model.compile(dir); model.load(dir)
    model(input_ids, attention_mask=..., position_ids=..., seq_ids=...) -> output with `.logits`
        (1, n) tokens at positions 0..n-1 -> context encoding (last-token logits)
        (B, 1)                            -> token generation
        (B, m), m == speculation_length   -> the speculation graph (logits for all m tokens)

NxD Inference compiles a single `speculation_length`, so a target verifies K = max(neuron_k_values) drafts per graph
call (`allowed_k = (0, K)`); rows with fewer drafts (the scheduler trims K near a sequence's length limit) are padded
inside the runner. Unsure (no library here to check): the logits layout of each graph ((B, S, V) or (B, V); both are
accepted), and whether NxDI needs `attention_mask` over the whole context rather than the new tokens (we send ones over
the new tokens, as its HF adapter does for continuous batching).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from engine.runners.base import Runner
from engine.runners.neuron_common import (
    NeuronOptions,
    SlotKVRunner,
    cache_dir_for,
    is_cache_hit,
    library_missing,
    log_compile,
    mark_complete,
    neuron_device_missing,
    resolve_buckets,
    timed,
)
from engine.runners.registry import Backend, RunnerSpec, register_backend

BACKEND = "neuron-nxdi"
WHERE = "the AWS Neuron NxD Inference containers (pytorch-inference-neuronx, SDK 2.21 or later)"
_TORCH_DTYPES = {"auto": torch.bfloat16, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "float32": torch.float32}


def available() -> str | None:
    return library_missing("neuronx_distributed_inference", "neuronx-distributed-inference", WHERE) or \
        neuron_device_missing()


class NxdiRunner(SlotKVRunner):
    def __init__(self, model, *, vocab_size: int, spec: RunnerSpec, context_buckets: tuple[int, ...],
                 speculation_length: int, allowed_k: tuple[int, ...], dtype: torch.dtype):
        super().__init__(vocab_size=vocab_size, max_slots=spec.max_slots, max_model_len=spec.max_model_len,
                         context_buckets=context_buckets,
                         window_lengths=(speculation_length,) if speculation_length > 1 else (),
                         allowed_k=allowed_k, backend=BACKEND, dtype=str(dtype).removeprefix("torch."))
        self.model = model

    def _run(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """One graph call -> float32 logits (rows, tokens returned, V)."""
        out = self.model(ids, attention_mask=torch.ones_like(ids), position_ids=pos, seq_ids=slots)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits.reshape(ids.shape[0], -1, logits.shape[-1])[:, :, :self.vocab_size].float()

    def _context(self, slot: int, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long)
        pos = torch.arange(len(tokens), dtype=torch.long).unsqueeze(0)
        return self._run(ids, pos, torch.tensor([slot], dtype=torch.long))[0, -1]

    def _decode(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return self._run(ids, pos, slots)[:, -1]

    def _window(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        return self._run(ids, pos, slots)[:, -ids.shape[1]:]


def build(path: str, spec: RunnerSpec) -> Runner:
    from neuronx_distributed_inference.models.config import NeuronConfig
    from neuronx_distributed_inference.models.llama.modeling_llama import (
        LlamaInferenceConfig,
        NeuronLlamaForCausalLM,
    )
    from neuronx_distributed_inference.utils.hf_adapter import load_pretrained_config

    opts = NeuronOptions.from_spec(spec)
    if opts.fused_speculation:
        raise ValueError("--neuron-fused-speculation is implemented for --backend neuron-tnx only")
    ctx, tok = resolve_buckets(opts, spec.max_model_len)
    k = max((k for k in opts.k_values if k > 0), default=0)
    spec_len = k + 1 if spec.role == "target" and k else 2 if spec.role == "draft" else 0
    dtype = _TORCH_DTYPES.get(spec.dtype, torch.bfloat16)
    ncfg = NeuronConfig(
        tp_degree=opts.tp_degree, batch_size=spec.max_slots, ctx_batch_size=1, tkg_batch_size=spec.max_slots,
        max_batch_size=spec.max_slots, is_continuous_batching=True, seq_len=spec.max_model_len,
        max_context_length=max(ctx), enable_bucketing=True, context_encoding_buckets=list(ctx),
        token_generation_buckets=list(tok), speculation_length=spec_len, torch_dtype=dtype)
    config = LlamaInferenceConfig(ncfg, load_config=load_pretrained_config(path))
    model = NeuronLlamaForCausalLM(path, config)
    key = {"role": spec.role, "slots": spec.max_slots, "ctx": ctx, "tok": tok, "spec_len": spec_len,
           "tp": opts.tp_degree, "dtype": str(dtype)}
    cache = cache_dir_for(opts.compiled_dir, "nxdi", path, key)
    hit = is_cache_hit(cache)
    target = cache or Path(tempfile.mkdtemp(prefix="specserve-nxdi-"))

    def compile_and_load() -> None:
        if not hit:
            model.compile(str(target))
        model.load(str(target))

    _, seconds = timed(compile_and_load)
    if cache is not None and not hit:
        mark_complete(cache, key, seconds)
    log_compile(BACKEND, spec.role, cache, hit, seconds)
    vocab = int(json.loads((Path(path) / "config.json").read_text())["vocab_size"])
    return NxdiRunner(model, vocab_size=vocab, spec=spec, context_buckets=ctx, speculation_length=spec_len,
                      allowed_k=(0, k) if spec_len > 1 and spec.role == "target" else (0,), dtype=dtype)


register_backend(Backend(BACKEND, build, available))
