"""A fake `neuronx_distributed_inference`, written from the real sources at aws-neuron/neuronx-distributed-inference
cd3abf3 (0.8.0, Neuron SDK 2.28, the last release for trn1/inf2); 0.9.0 (c63afe0) has the same host-side code for
everything below (line numbers are cd3abf3's; 0.9.0's model_base.py is ~50 lines earlier).

`install(monkeypatch)` puts it in `sys.modules` as `neuronx_distributed_inference` (+ `.models.config`,
`.models.llama.modeling_llama`, `.utils.hf_adapter`). Host-side code reproduced, graphs replaced by `SlotModel`:

- models/config.py `NeuronConfig(**kwargs)` (92): pops its keys with their defaults (batch sizes default to
  `batch_size`, `max_context_length`/`max_length` to `seq_len`, `speculation_length` 0); a key the real class does
  not pop is only logged ("Unexpected keyword arguments"), exactly as there: the signature test catches typos.
  `InferenceConfig.__init__` (812): `load_config(self)`, then keyword overrides, then `validate_config`;
  `LlamaInferenceConfig.get_required_attributes` (modeling_llama.py 321-333) needs `rope_theta` and `pad_token_id`
  (transformers 5 configs carry `rope_parameters` only, so the caller must pass `rope_theta`).
- utils/hf_adapter.py `load_pretrained_config` (36): `AutoConfig.from_pretrained(path).to_dict()` into the config.
- model_base.py `NeuronBaseForCausalLM.__init__` (~3099-3111): a context-encoding model, then EITHER a speculation
  model (`speculation_length > 0`) OR a token-generation model, never both.
- `forward` (3355) -> `_get_model_outputs` (3594): `position_ids.min() == 0` -> context encoding whatever the length
  (`_is_prefill`, 3591); else `input_ids.shape[-1] == speculation_length` -> speculation model; else the
  token-generation model (AttributeError when it was not built).
- model_wrapper.py `ModelWrapper.forward` (1314): int64 -> int32 (715); `pad_inputs` (725): context encoding pads
  ids/mask/positions with (pad_token_id, 0, 1) to the first bucket with `len < bucket` (`_get_seq_bucket`, 898);
  token generation and speculation pick the bucket from `attention_mask.shape[1] + speculation_length` and pad the
  mask with zeros: the mask is the prior-KV mask (`_create_simple_attn_mask` / `_create_spec_attn_mask`,
  model_base.py 258-270). Fewer rows than the compiled batch -> `_forward_with_pad` (569): missing seq_ids get the
  FIRST row's inputs (`repeat_first_batchline`), rows sorted by seq id, outputs index-selected back. More rows than a
  batch-1 context model -> one call per row (1350-1380).
- Graphs: context encoding writes K/V of positions 0..bucket-1 and returns the logits at
  `torch.max(position_ids, dim=1).indices` (model_base.py 1014): for a 1-token prompt that is a pad token (index 1).
  Token generation returns (B, 1, V), speculation (B, speculation_length, V).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from tests.engine.runners.neuron.contract_model import ContractViolation, SlotModel, recorded

VERSION = "0.8.0"  # _version.py at cd3abf3
COMPILES: list[str] = []
ROUTES: list[str] = []  # the model each forward call ran: "context_encoding_model", "speculation_model", ...
_SIGS = json.loads((Path(__file__).parent / "real_signatures.json").read_text())
_POPPED = set(next(v for v in _SIGS["neuronx_distributed_inference"] if v["version"] == VERSION)["callables"][
    "neuronx_distributed_inference.models.config.NeuronConfig.__init__"]["popped_kwargs"])
_L = "neuronx_distributed_inference.models.llama.modeling_llama."


class NeuronConfig:
    @recorded("neuronx_distributed_inference.models.config.NeuronConfig.__init__")
    def __init__(self, **kwargs) -> None:
        self.batch_size = kwargs.pop("batch_size", 1)
        self.padding_side = kwargs.pop("padding_side", "right")
        self.allow_input_truncation = kwargs.pop("allow_input_truncation", False)
        self.seq_len = kwargs.pop("seq_len", 128)
        self.n_positions = kwargs.pop("n_positions", self.seq_len)
        self.torch_dtype = kwargs.pop("torch_dtype", torch.bfloat16)
        if isinstance(self.torch_dtype, str):
            self.torch_dtype = getattr(torch, self.torch_dtype)
        self.max_context_length = kwargs.pop("max_context_length", self.seq_len)
        self.max_length = kwargs.pop("max_length", self.seq_len)
        assert self.max_context_length <= self.max_length, "max_context_length cannot be more than max_length"
        self.ctx_batch_size = kwargs.pop("ctx_batch_size", self.batch_size)
        self.tkg_batch_size = kwargs.pop("tkg_batch_size", self.batch_size)
        self.max_batch_size = kwargs.pop("max_batch_size", self.batch_size)
        self.is_continuous_batching = kwargs.pop("is_continuous_batching", False)
        self.on_device_sampling_config = kwargs.pop("on_device_sampling_config", None)
        self.enable_bucketing = kwargs.pop("enable_bucketing", False)
        self.context_encoding_buckets = kwargs.pop("context_encoding_buckets", None)
        self.token_generation_buckets = kwargs.pop("token_generation_buckets", None)
        if self.context_encoding_buckets is not None:
            self.context_encoding_buckets.sort()
            assert self.context_encoding_buckets[-1] <= self.max_context_length, (
                f"Context bucket {self.context_encoding_buckets[-1]} should be <= {self.max_context_length}")
        if self.token_generation_buckets is not None:
            self.token_generation_buckets.sort()
            assert self.token_generation_buckets[-1] <= self.max_length, (
                f"Token generation bucket {self.token_generation_buckets[-1]} should be <= {self.max_length}")
        self.speculation_length = kwargs.pop("speculation_length", 0)
        self.spec_batch_size = kwargs.pop("spec_batch_size", self.batch_size)
        self.enable_fused_speculation = kwargs.pop("enable_fused_speculation", False)
        self.tp_degree = kwargs.pop("tp_degree", 1)
        for k in [k for k in kwargs if k in _POPPED]:  # real keys this fake does not model: accepted, ignored
            kwargs.pop(k)
        if kwargs:
            logging.warning(f"NeuronConfig init: Unexpected keyword arguments: {kwargs}")
        self.unexpected = dict(kwargs)


@recorded("neuronx_distributed_inference.utils.hf_adapter.load_pretrained_config")
def load_pretrained_config(model_path_or_name=None, hf_config=None):
    def load_config(self):
        if (model_path_or_name is None) == (hf_config is None):
            raise ValueError('Please provide only one of "model_path_or_name" or "hf_config"')
        config = AutoConfig.from_pretrained(model_path_or_name) if model_path_or_name is not None else hf_config
        config_dict = config.to_dict()
        config_dict.pop("dtype", None)
        config_dict.pop("torch_dtype", None)
        self.__dict__.update(config_dict)
    return load_config


class InferenceConfig:
    def get_required_attributes(self) -> list[str]:
        return []

    @recorded(_L + "LlamaInferenceConfig.__init__")
    def __init__(self, neuron_config, fused_spec_config=None, load_config=None, metadata=None, **kwargs):
        self.neuron_config = neuron_config
        self.fused_spec_config = fused_spec_config
        if load_config is not None:
            load_config(self)
        self.metadata = metadata
        for key, value in kwargs.items():
            setattr(self, key, value)
        missing = [x for x in self.get_required_attributes() if not hasattr(self, x)]
        assert len(missing) == 0, f"Config must define {missing}"


class LlamaInferenceConfig(InferenceConfig):
    def get_required_attributes(self) -> list[str]:  # modeling_llama.py 321-333
        return ["hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id",
                "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps", "hidden_act"]


@dataclass
class CausalLMOutputWithPast:
    logits: torch.Tensor | None
    hidden_states: torch.Tensor | None = None


class _Wrapper:
    """model_wrapper.py `ModelWrapper`: one traced model (a tag, a compiled batch size, its buckets)."""

    def __init__(self, owner: NeuronLlamaForCausalLM, tag: str, batch_size: int, buckets: list[int], spec_len: int):
        self.owner, self.tag, self.batch_size, self.buckets, self.spec_len = owner, tag, batch_size, buckets, spec_len

    def _seq_bucket(self, input_len: int) -> int:  # _get_seq_bucket (898-916)
        required = input_len + self.spec_len
        for b in self.buckets:
            if required < b:
                return b
        if required == self.buckets[-1]:
            return self.buckets[-1]
        raise ValueError(f"Input len {input_len} exceeds largest bucket ({self.buckets[-1]}) for {self.tag}")

    def __call__(self, input_ids, attention_mask, position_ids, seq_ids):
        args = [t.to(torch.int32) if t.dtype == torch.int64 else t  # convert_int64_to_int32 (715)
                for t in (input_ids, attention_mask, position_ids, seq_ids)]
        if any(t.dtype.is_floating_point for t in args[:3] + [args[3]]):
            raise RuntimeError("expected integer input_ids, attention_mask, position_ids and seq_ids")
        input_ids, attention_mask, position_ids, seq_ids = args
        rows = seq_ids.shape[0]
        if self.tag == "context_encoding_model":
            if rows > self.batch_size:  # 1350-1380: one graph call per batch of rows, each re-padded
                outs = [self._cte(input_ids[r:r + 1], position_ids[r:r + 1], seq_ids[r:r + 1]) for r in range(rows)]
                return torch.cat(outs)
            return self._cte(input_ids, position_ids, seq_ids)
        bucket = self._seq_bucket(attention_mask.shape[1])
        mask = torch.nn.functional.pad(attention_mask, (0, bucket - attention_mask.shape[1]), value=0)
        if rows < self.batch_size:  # _forward_with_pad: missing seq ids repeat the first row, then sort by seq id
            listed = seq_ids.tolist()
            padded = torch.tensor(listed + [x for x in range(self.batch_size) if x not in listed])
            padded, indices = torch.sort(padded)
            ids, mask, pos = [torch.cat([t, t[:1].repeat(self.batch_size - rows, 1)]).index_select(0, indices)
                              for t in (input_ids, mask, position_ids)]
            logits = self._tkg(ids, mask, pos, padded)
            return logits.index_select(0, seq_ids.long())
        if rows > self.batch_size:
            raise ValueError(f"{rows} rows exceed the compiled batch size {self.batch_size} of {self.tag}")
        return self._tkg(input_ids, mask, position_ids, seq_ids)

    def _cte(self, input_ids, position_ids, seq_ids):
        """One context-encoding graph call of batch 1: pad to the bucket, write K/V 0..bucket-1, gather the logits at
        the largest position id (the pad positions are 1)."""
        n = input_ids.shape[1]
        if n > self.owner.nc.max_context_length:
            raise ValueError(f"Inputs supplied ({n} tokens) are longer than max_context_length "
                             f"({self.owner.nc.max_context_length} tokens). To truncate inputs, set "
                             "allow_input_truncation=True.")
        bucket = self._seq_bucket(n)
        pad = self.owner.config.pad_token_id
        ids = torch.nn.functional.pad(input_ids, (0, bucket - n), value=pad)
        pos_in = torch.nn.functional.pad(position_ids, (0, bucket - n), value=1)
        # the graph fills the slot's cache prefix 0..bucket-1; rotary positions of the pads do not matter for reads
        logits = self.owner.slots.run(ids.long(), torch.arange(bucket)[None], seq_ids.long())  # (1, bucket, V)
        index = torch.max(pos_in, dim=1, keepdim=True).indices  # model_base.py 1014
        return logits[torch.arange(1)[:, None], index]  # (1, 1, V)

    def _tkg(self, input_ids, mask, position_ids, seq_ids):
        if len(set(seq_ids.tolist())) != seq_ids.numel():
            raise ContractViolation(f"seq_ids must be distinct KV cache lines, got {seq_ids.tolist()}")
        return self.owner.slots.run(input_ids.long(), position_ids.long(), seq_ids.long(), prior=mask)  # (B, S, V)


class NeuronLlamaForCausalLM:
    @recorded(_L + "NeuronLlamaForCausalLM.__init__")
    def __init__(self, model_path, config=None, neuron_config=None):
        self.model_path, self.config = str(model_path), config
        self.nc = nc = config.neuron_config
        self.neuron_config = nc
        cte = nc.context_encoding_buckets if nc.enable_bucketing and nc.context_encoding_buckets \
            else [nc.max_context_length]
        tkg = nc.token_generation_buckets if nc.enable_bucketing and nc.token_generation_buckets else [nc.max_length]
        self.models = [_Wrapper(self, "context_encoding_model", nc.ctx_batch_size, list(cte), 0)]
        if nc.speculation_length > 0:  # model_base.py 3105-3110: no token-generation model
            self.speculation_model = _Wrapper(self, "speculation_model", nc.spec_batch_size, list(tkg),
                                              nc.speculation_length)
            self.models.append(self.speculation_model)
        else:
            self.token_generation_model = _Wrapper(self, "token_generation_model", nc.tkg_batch_size, list(tkg), 0)
            self.models.append(self.token_generation_model)
        self.context_encoding_model = self.models[0]
        self.slots: SlotModel | None = None

    def _key(self) -> str:
        nc = {k: str(v) for k, v in vars(self.nc).items()}
        cfg = {"hf": Path(self.model_path, "config.json").read_text(), "nc": nc}
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:20]

    @recorded(_L + "NeuronLlamaForCausalLM.compile")
    def compile(self, compiled_model_path, debug=False, pre_shard_weights_hook=None, dry_run=False):
        COMPILES.append(self._key())
        Path(compiled_model_path).mkdir(parents=True, exist_ok=True)
        (Path(compiled_model_path) / "neuron_config.json").write_text(json.dumps(self._key()))
        (Path(compiled_model_path) / "model.pt").write_text(self._key())

    @recorded(_L + "NeuronLlamaForCausalLM.load")
    def load(self, compiled_model_path, start_rank_id=None, local_ranks_size=None, skip_warmup=False):
        f = Path(compiled_model_path) / "model.pt"
        if not f.is_file() or f.read_text() != self._key():
            raise FileNotFoundError(f"no model compiled for this configuration in {compiled_model_path}")
        self.slots = SlotModel(self.model_path, self.nc.max_batch_size, self.nc.seq_len)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    @recorded(_L + "NeuronLlamaForCausalLM.forward")
    def forward(self, input_ids=None, seq_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, sampling_params=None, prev_hidden=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, adapter_ids=None, medusa_args=None,
                return_dict=None, llava_args=[], input_capture_hook=None, slot_mapping=None,  # noqa: B006
                block_table=None, full_context_lens=None, computed_context_lens=None, tf_args=None):
        if self.slots is None:
            raise RuntimeError("Forward called before load. Run load() or load_state_dict() making calling forward")
        if attention_mask is None:  # _infer_attention_mask (3300-3318)
            b, s = position_ids.shape
            if s != 1:
                attention_mask = (position_ids >= torch.arange(s).view(1, -1)).to(position_ids.dtype)
            else:
                m = int(position_ids.max())
                attention_mask = (position_ids.expand(b, m) - 1 >= torch.arange(m).view(1, -1)).to(
                    position_ids.dtype)
        if seq_ids is None:
            seq_ids = torch.arange(input_ids.shape[0])
        if position_ids.min().item() == 0:  # _is_prefill (3591)
            ROUTES.append("context_encoding_model")
            logits = self.context_encoding_model(input_ids, attention_mask, position_ids, seq_ids)
        elif input_ids.shape[-1] == self.nc.speculation_length:
            ROUTES.append("speculation_model")
            logits = self.speculation_model(input_ids, attention_mask, position_ids, seq_ids)
        else:
            ROUTES.append("token_generation_model")
            logits = self.token_generation_model(input_ids, attention_mask, position_ids, seq_ids)
        return CausalLMOutputWithPast(logits=logits, hidden_states=logits)


def install(monkeypatch) -> None:
    """Register the fake as `neuronx_distributed_inference` for the duration of a test."""
    COMPILES.clear()
    ROUTES.clear()
    names = ["neuronx_distributed_inference", "neuronx_distributed_inference.models",
             "neuronx_distributed_inference.models.config", "neuronx_distributed_inference.models.llama",
             "neuronx_distributed_inference.models.llama.modeling_llama", "neuronx_distributed_inference.utils",
             "neuronx_distributed_inference.utils.hf_adapter"]
    mods = {n: types.ModuleType(n) for n in names}
    mods["neuronx_distributed_inference"].__version__ = VERSION
    mods["neuronx_distributed_inference.models.config"].NeuronConfig = NeuronConfig
    mods["neuronx_distributed_inference.models.config"].InferenceConfig = InferenceConfig
    ml = mods["neuronx_distributed_inference.models.llama.modeling_llama"]
    ml.NeuronLlamaForCausalLM, ml.LlamaInferenceConfig = NeuronLlamaForCausalLM, LlamaInferenceConfig
    mods["neuronx_distributed_inference.utils.hf_adapter"].load_pretrained_config = load_pretrained_config
    for name, mod in mods.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(mods[parent], child, mod)
        monkeypatch.setitem(sys.modules, name, mod)
