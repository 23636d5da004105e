"""`NxdiRunner`: NxD Inference (neuronx-distributed-inference) `NeuronLlamaForCausalLM` behind the `Runner` protocol.

NxD Inference is transformers-neuronx's successor on trn1/inf2. The library is imported only inside functions, so this
module imports (and registers `neuron-nxdi`) everywhere.

Checked against aws-neuron/neuronx-distributed-inference cd3abf3 (0.8.0, SDK 2.28, the last release for trn1/inf2) and
c63afe0 (0.9.0), which share the host-side code used here; file:line at cd3abf3, under
src/neuronx_distributed_inference/ (see neuron_common.py for which slots each call lists):

    NeuronConfig(tp_degree, batch_size=max_slots, ctx_batch_size=1, tkg_batch_size=max_slots, max_batch_size=max_slots,
                 is_continuous_batching=True, seq_len=max_model_len, max_context_length=largest context bucket,
                 enable_bucketing=True, context_encoding_buckets=[...], token_generation_buckets=[...],
                 speculation_length=K + 1 or 0, torch_dtype=...)                         models/config.py 92-361
    config = LlamaInferenceConfig(neuron_config, load_config=load_pretrained_config(path), rope_theta=...)
    model = NeuronLlamaForCausalLM(path, config); model.compile(dir); model.load(dir)   models/application_base.py
    model(input_ids, attention_mask=..., position_ids=..., seq_ids=...).logits        model_base.py 3355

- Routing (model_base.py 3591-3770): `position_ids.min() == 0` -> context encoding, whatever the length; else
  `input_ids.shape[-1] == speculation_length` -> the speculation model; else the token-generation model, which is
  NOT built when `speculation_length > 0` (3105-3110). So a target compiled for K has one graph for every non-context
  call: K + 1 tokens. Decode rows (K = 0 steps, warmup) run through it padded (neuron_common.py point 3), and the
  draft is compiled with `speculation_length = 0` (token generation only; its catch-up runs token by token).
- `attention_mask` of a token-generation/speculation call is the PRIOR-KV mask: position j of the cache is seen where
  it is 1 (`_create_simple_attn_mask` / `_create_spec_attn_mask`, 258-270), and its width plus speculation_length
  picks the bucket (`get_target_bucket`, model_wrapper.py 826-916). The HF adapter passes the full-context mask
  (utils/hf_adapter.py 386-404 grows it by one column per generated token; 725-741 for assisted decoding). Here row
  b's mask is 1 on [0, start_b) and the width is the largest start.
- Rows left out are padded by repeating the first row (`_forward_with_pad`, model_wrapper.py 569): free slots are left
  out, every live slot is listed.
- Context encoding pads positions with 1 and returns the logits at the largest position (model_base.py 1014): for a
  1-token prompt that is a pad token, so 1-token prompts are refused (`min_context = 2`).
- `LlamaInferenceConfig` requires `rope_theta` and `pad_token_id` (modeling_llama.py 321-333) and reads neither from
  `rope_parameters`: they are passed explicitly when config.json lacks them (transformers 5 writes only
  `rope_parameters`).
- `generate()` through the HF adapter fails in 0.8/0.9 (`tensor_capture_hook` unset, hf_adapter.py 313): the runner
  drives `forward` directly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from engine.errors import InvalidRequestError
from engine.runners.base import Runner
from engine.runners.neuron_common import (
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
WHERE = ("the AWS Neuron NxD Inference containers (pytorch-inference-neuronx; checked against NxD Inference 0.8 of "
         "SDK 2.28, the last release for trn1/inf2, and 0.9)")
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
                         allowed_k=allowed_k, backend=BACKEND, dtype=str(dtype).removeprefix("torch."),
                         decode_graph=speculation_length == 0, min_context=2)
        self.model = model

    def check_request(self, prompt_ids, params) -> None:
        super().check_request(prompt_ids, params)
        if len(prompt_ids) < 2:
            raise InvalidRequestError("neuron-nxdi needs a prompt of at least 2 tokens: NxD Inference's context "
                                      "encoding returns a padding token's logits for a 1-token prompt", field="prompt")

    def _run(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """One model call -> float32 logits (rows, tokens returned, V)."""
        out = self.model(ids, attention_mask=mask, position_ids=pos, seq_ids=slots)
        logits = out.logits
        return logits.reshape(ids.shape[0], -1, logits.shape[-1])[:, :, :self.vocab_size].float()

    def _context(self, slot: int, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long)  # (1, n): positions 0..n-1, mask over the prompt
        pos = torch.arange(len(tokens), dtype=torch.long).unsqueeze(0)
        return self._run(ids, torch.ones_like(ids), pos, torch.tensor([slot], dtype=torch.long))[0, -1]

    def _listed(self, ids, pos, slots, live) -> torch.Tensor:
        """Run the live rows with their prior-KV mask; free rows are left to the library's first-row padding."""
        idx = live.nonzero().flatten()
        starts = pos[idx, 0]  # (R,) first position of each row = how many cache positions it may read
        width = int(starts.max())
        mask = (torch.arange(width)[None, :] < starts[:, None]).long()  # (R, width)
        logits = self._run(ids[idx], mask, pos[idx], slots[idx])  # (R, S, V) in listed order
        out = torch.zeros(ids.shape[0], logits.shape[1], self.vocab_size)
        out[idx] = logits
        return out

    def _decode(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return self._listed(ids, pos, slots, live)[:, -1]

    def _window(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        return self._listed(ids, pos, slots, live)[:, -ids.shape[1]:]


def _config_overrides(path: str) -> dict:
    """Attributes LlamaInferenceConfig requires (modeling_llama.py 321-333) that config.json may lack."""
    hf = json.loads((Path(path) / "config.json").read_text())
    out = {}
    if "rope_theta" not in hf:
        out["rope_theta"] = float((hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    if hf.get("pad_token_id") is None:
        eos = hf.get("eos_token_id")
        out["pad_token_id"] = int((eos[0] if isinstance(eos, list) else eos) or 0)
    return out


def build(path: str, spec: RunnerSpec) -> Runner:
    from neuronx_distributed_inference.models.config import NeuronConfig
    from neuronx_distributed_inference.models.llama.modeling_llama import (
        LlamaInferenceConfig,
        NeuronLlamaForCausalLM,
    )
    from neuronx_distributed_inference.utils.hf_adapter import load_pretrained_config

    opts = spec.neuron
    if opts.fused_speculation:
        raise ValueError("--neuron-fused-speculation is implemented for --backend neuron-tnx only")
    ctx, tok = resolve_buckets(opts, spec.max_model_len)
    k = max((k for k in opts.k_values if k > 0), default=0)
    # One speculation graph of K + 1 tokens replaces token generation (model_base.py 3105-3110); the draft keeps the
    # token-generation graph (speculation_length 0).
    spec_len = k + 1 if spec.role == "target" and k else 0
    dtype = _TORCH_DTYPES.get(spec.dtype, torch.bfloat16)
    ncfg = NeuronConfig(
        tp_degree=opts.tp_degree, batch_size=spec.max_slots, ctx_batch_size=1, tkg_batch_size=spec.max_slots,
        max_batch_size=spec.max_slots, is_continuous_batching=True, seq_len=spec.max_model_len,
        max_context_length=max(ctx), enable_bucketing=True, context_encoding_buckets=list(ctx),
        token_generation_buckets=list(tok), speculation_length=spec_len, torch_dtype=dtype)
    config = LlamaInferenceConfig(ncfg, load_config=load_pretrained_config(path), **_config_overrides(path))
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
