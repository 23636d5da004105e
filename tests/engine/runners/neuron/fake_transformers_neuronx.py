"""A fake `transformers_neuronx`, written from the real sources at aws-neuron/transformers-neuronx 1ade6d7 (0.13.x, the
last public sync; what Neuron SDK 2.25 ships). Line numbers below are at that commit.

`install(monkeypatch)` puts it in `sys.modules` as `transformers_neuronx` (+ `.config`, `.llama.model`,
`.fused_speculation`). The host-side code the runners depend on is reproduced step by step, with the library's own
asserts and messages; the compiled graphs are replaced by `SlotModel` (the project's torch model over a slot cache):

- `config.py`: `NeuronConfig` (206; continuous batching forces `padding_side='right'`, 272-275; unknown keywords fail,
  ~315), `ContinuousBatchingConfig` (78; only its five keywords), `GenerationConfig` (108).
- `llama/model.py` `LlamaForSampling.__init__` (32): token buckets = `n_positions`, context buckets =
  `context_length_estimate` (bucket.py `token_sizes`/`context_sizes`), context batch 1 under continuous batching (88).
  `enable_speculative_decoder` (base.py 122) keys graphs by `(k, batch_size)`.
- `to_neuron` (base.py 77) compiles, or with `load(dir)` first (50) reads one NEFF per graph from dir and raises
  base.py 781's FileNotFoundError when one is missing; `save(dir)` (39) writes them.
- `forward` (model.py 290) -> `_preprocess` (base.py 589): `_prepare_for_continuous_batching` (492) then
  `_prepare_for_par_ctx_rhs_padding` (326):
  * n > 1 tokens and `cache_ids.flatten()[0] == 0` -> context encoding (506): the row is padded to its context bucket
    and cache ids become `arange(bucket)` (464-466): K/V of positions 0..bucket-1 are written. Batch 1 per graph call
    (`_context_dynamic_batching`, 649). Returns last-token logits (1, V) (`_forward`, 700-721).
  * one token per row -> token generation (576-585): `full_cache_ids = zeros(batch, 1, dtype=input_ids.dtype)` then
    `scatter_(src=cache_ids)`: cache ids of another dtype fail like torch does; slots the call does not list get token
    0 at cache position 0. Logits come back in the listed order (`_postprocess`, 613-639).
- `speculative_forward` (model.py 308): the graph is found from the input length, because `speculation_length` (an
  int) never equals a `(k, batch)` key (324-328); a shorter input is padded with cache id `max(context_buckets) - 1`
  (base.py 565-569); the input may not exceed the context bucket (553-555); the batch must be a compiled one (559-561).
  If the first cache id is 0 the call takes the context path of 506 for every row. Returns (k, V, B) (346-349).
- `fused_speculation.py` `FusedSpeculativeDecoder` (281): asserts on-device embedding and generation on both models
  (295-306); an `nn.Module` with no `load`/`save`; `to_neuron` (464) builds on the two compiled models.
  `speculative_iteration` (746): if ANY row has cache id 0 the whole call runs the models' own `forward` (context
  branch, counts 1, 767-800); else unlisted rows are zero-padded (`preprocess_input`, 871), the fused graph drafts k
  tokens and verifies k+1 (`_fused_hlo_with_standalone_draft`, 150), and the result is `(tokens (B, k+1), counts
  (B, 1))` after `speculative_iteration_post_process` (220), which replaces every `pad_token_id` in the tokens with
  `tokens[0, 0]`.

On-device generation is modelled greedy only (`do_sample=False`), which is all the runner asks for.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import torch
from transformers import AutoConfig

from tests.engine.runners.neuron.contract_model import ContractViolation, SlotModel, recorded

VERSION = "0.13.x"  # transformers_neuronx/version.py at 1ade6d7
COMPILES: list[str] = []  # one entry per graph compiled (not loaded): tests count cache misses
ROUTES: list[str] = []  # the branch each multi-token / fused call took: "context", "speculation", "fused"
_M = "transformers_neuronx.llama.model.LlamaForSampling."


class Layout:
    HSB, BSH, SBH = "HSB", "BSH", "SBH"


def _find(buckets, size):
    """bucket.py 94: the smallest bucket >= size, else the largest; None without buckets."""
    if not buckets:
        return None
    import bisect

    return buckets[bisect.bisect_left(buckets, size, hi=len(buckets) - 1)]


# -- config.py -------------------------------------------------------------------------------------------------------


class ContinuousBatchingConfig:
    @recorded("transformers_neuronx.config.ContinuousBatchingConfig.__init__")
    def __init__(self, **kwargs):
        self.max_num_seqs = kwargs.pop("max_num_seqs") if kwargs.get("max_num_seqs") is not None \
            else kwargs.pop("batch_size_for_shared_caches")
        self.max_model_len = kwargs.pop("max_model_len") if kwargs.get("max_model_len") is not None else None
        self.optimized_paged_attention = kwargs.pop("optimized_paged_attention", None) or False
        self.enable_chunked_prefill = kwargs.pop("enable_chunked_prefill", None) or False
        assert len(kwargs) == 0, f"unexpected key word arguments: {kwargs.keys()}"

    @property
    def batch_size_for_shared_caches(self) -> int:
        return self.max_num_seqs


class GenerationConfig:
    @recorded("transformers_neuronx.config.GenerationConfig.__init__")
    def __init__(self, *, max_length=None, do_sample=False, top_k=50, top_p=1.0, top_p_min_tokens=1,
                 global_top_k=None, eos_token_id=None, temperature=1.0, dynamic=False, deterministic=False,
                 per_batch_line=False):
        self.max_length, self.do_sample, self.top_k, self.top_p = max_length, do_sample, top_k, top_p
        self.eos_token_id, self.temperature, self.dynamic = eos_token_id, temperature, dynamic
        self.deterministic, self.per_batch_line, self.global_top_k = deterministic, per_batch_line, global_top_k
        self.top_p_min_tokens = top_p_min_tokens


class NeuronConfig:
    @recorded("transformers_neuronx.config.NeuronConfig.__init__")
    def __init__(self, *, sparse_attn=None, quant=None, kv_cache_quant=None, continuous_batching=None,
                 attention_layout=Layout.HSB, collectives_layout=Layout.HSB, cache_layout=Layout.SBH,
                 padding_side='left', group_query_attention=None, sequence_parallel_norm=False,
                 sequence_parallel_norm_threshold=2048, bf16_rms_norm=False, on_device_embedding=False,
                 on_device_generation=None, all_reduce_dtype=None, cast_logits_dtype='float32', fuse_qkv=False,
                 qkv_tiling=False, weight_tiling=False, mlp_in_weight_tiling_permute_order=[1, 2, 0, 3],  # noqa: B006
                 mlp_out_weight_tiling_permute_order=[1, 2, 0, 3], log_softmax_scores=False,  # noqa: B006
                 shard_over_sequence=False, output_all_logits=False, attn_output_transposed=False,
                 fused_rmsnorm_qkv=False, fused_rmsnorm_mlp=False, mlp_out_weight_transpose=False, fuse_mlp=False,
                 is_eagle_target=False, is_eagle_draft=False, has_pre_attention_norm=True,
                 compilation_worker_count=None, duplicate_q_weight_sos=False, **kwargs):
        assert padding_side in ['left', 'right'], (
            f"The `padding_side={padding_side}` argument must be either 'left' or 'right'")
        self.continuous_batching = continuous_batching
        self.padding_side = padding_side
        self.lhs_aligned = padding_side == 'right'
        self.lhs_aligned = kwargs.pop('use_2d_cache_ids', self.lhs_aligned)
        self.lhs_aligned = kwargs.pop('lhs_aligned', self.lhs_aligned)
        if self.continuous_batching:  # config.py 272-275: force left alignment for continuous batching
            self.lhs_aligned = True
            self.padding_side = "right"
        self.on_device_embedding = on_device_embedding
        self.on_device_generation = on_device_generation
        self.cast_logits_dtype = cast_logits_dtype
        self.output_all_logits = output_all_logits
        self.is_eagle_target, self.is_eagle_draft = is_eagle_target, is_eagle_draft
        self.shard_over_sequence = shard_over_sequence
        self.compilation_worker_count = compilation_worker_count
        assert len(kwargs) == 0, f"Unexpected NeuronConfig keyword arguments: {kwargs}"


# -- llama/model.py + base.py ----------------------------------------------------------------------------------------


class LlamaForSampling:
    @classmethod
    @recorded(_M + "from_pretrained")
    def from_pretrained(cls, pretrained_model_path, *model_args, **kwargs):
        # module.py 398-424 `_sanity_check`
        n_positions = kwargs.get("n_positions", 2048)
        cle = kwargs.get("context_length_estimate")
        max_n_pos = max(n_positions) if isinstance(n_positions, list) else n_positions
        max_cle = max(cle) if isinstance(cle, list) else cle
        if isinstance(max_n_pos, int) and isinstance(max_cle, int):
            assert max_n_pos >= max_cle, \
                f"Max context_length_estimate {max_cle} cannot be more than max n_positions {max_n_pos}."
        neuron_config = kwargs.get("neuron_config")
        if neuron_config is not None and neuron_config.continuous_batching:
            expected = kwargs.get("batch_size")
            got = neuron_config.continuous_batching.batch_size_for_shared_caches
            assert got == expected, f"invalid batch_size_for_shared_caches ({got}), {expected} is expected"
        model = cls(AutoConfig.from_pretrained(pretrained_model_path), *model_args, **kwargs)
        model._path = str(pretrained_model_path)
        return model

    @recorded(_M + "__init__")
    def __init__(self, config, *, n_positions=2048, batch_size=1, amp='f32', tp_degree=2,
                 context_length_estimate=None, context_unroll=None, unroll=None, neuron_config=None,
                 prefixed_length=0, **kwargs):
        if amp not in ("f32", "bf16", "f16"):
            raise KeyError(amp)  # utils.parse_amp
        self.config = config
        self.config.tp_degree = tp_degree
        self.amp = amp
        self.neuron_config = neuron_config if neuron_config else NeuronConfig()
        if self.neuron_config.on_device_generation:
            self.neuron_config.on_device_generation.vocab_size = config.vocab_size
        # bucket.token_sizes / context_sizes: lists are taken as given (sorted); an int context estimate is one bucket
        self.token_buckets = sorted(n_positions) if isinstance(n_positions, list) else [n_positions]
        if isinstance(context_length_estimate, list):
            self.context_buckets = sorted(context_length_estimate)
        elif isinstance(context_length_estimate, int):
            self.context_buckets = [context_length_estimate] if context_length_estimate > 0 else []
        else:
            self.context_buckets = [b // 2 for b in self.token_buckets]
        self.batch_sizes = [batch_size] if isinstance(batch_size, int) else sorted(batch_size)
        cb = self.neuron_config.continuous_batching
        self.context_batch_sizes = [1] if cb else self.batch_sizes  # model.py 88-89
        self.decoder_lm_head_for_speculation: dict[tuple[int, int], str] = {}
        self._compiled_artifacts_directory: str | None = None
        self._path: str | None = None
        self.slots: SlotModel | None = None
        self.compiled = False

    @property
    def tp_degree(self) -> int:
        return self.config.tp_degree

    @recorded(_M + "enable_speculative_decoder")
    def enable_speculative_decoder(self, speculation_length, batch_sizes=None, token_tree=None):
        if self.compiled:
            raise ContractViolation("enable_speculative_decoder after to_neuron(): its graphs are never compiled")
        if isinstance(speculation_length, int):
            speculation_length = [speculation_length]
        batch_sizes = self.batch_sizes if batch_sizes is None else batch_sizes
        if isinstance(batch_sizes, int):
            batch_sizes = [batch_sizes]
        for k in speculation_length:
            for b in batch_sizes:
                self.decoder_lm_head_for_speculation[k, b] = "speculation"

    def _kernels(self) -> list[str]:
        """One NEFF file name per compiled graph (base.py `hash_hlo`: the HLO's hash)."""
        cfg = json.dumps(self.config.to_dict(), sort_keys=True, default=str)
        nc = self.neuron_config
        common = [cfg, self.amp, self.tp_degree, nc.on_device_embedding, nc.on_device_generation is not None]
        graphs = [("token", n, b) for n in self.token_buckets for b in self.batch_sizes]
        graphs += [("context", c, b) for c in self.context_buckets for b in self.context_batch_sizes]
        graphs += [("spec", k, b, n) for (k, b) in sorted(self.decoder_lm_head_for_speculation)
                   for n in self.token_buckets]
        return [hashlib.sha256(json.dumps([*common, *g], default=str).encode()).hexdigest()[:20] + ".neff"
                for g in graphs]

    @recorded(_M + "load")
    def load(self, directory):
        self._compiled_artifacts_directory = directory

    @recorded(_M + "to_neuron")
    def to_neuron(self):
        d = self._compiled_artifacts_directory
        if d is not None:  # base.py 172-176, 775-785
            if not Path(d).is_dir():
                raise FileNotFoundError(f'Did not find directory: {d}.')
            for k in self._kernels():
                if not (Path(d) / k).is_file():
                    raise FileNotFoundError('Could not find a matching NEFF for your HLO in this directory. ...')
        else:
            COMPILES.extend(self._kernels())
        self.slots = SlotModel(self._path, max(self.batch_sizes), max(self.token_buckets))
        self.compiled = True

    @recorded(_M + "save")
    def save(self, directory, sharded_weights=False):
        if not self.compiled:
            raise AssertionError("cannot save a model which has not been successfully compiled")
        Path(directory).mkdir(parents=True, exist_ok=True)
        for k in self._kernels():
            (Path(directory) / k).write_text("neff")

    def __call__(self, *args, **kwargs):  # an nn.Module in the real library: calling it runs forward
        return self.forward(*args, **kwargs)

    # -- host-side preprocessing -----------------------------------------------------------------------------------

    def _require_compiled(self):
        if not self.compiled:
            raise AttributeError("'NoneType' object has no attribute 'execute' (call to_neuron() first)")

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        """On-device generation: token ids instead of logits (greedy only here)."""
        gen = self.neuron_config.on_device_generation
        if gen.do_sample:
            raise ContractViolation("the fake models greedy on-device generation (do_sample=False) only")
        return logits.argmax(-1, keepdim=True).to(torch.int32)  # (rows, 1)

    def _context_rows(self, input_ids, cache_ids, start_ids):
        """base.py 506-519 + 452-466: each row padded to its context bucket, K/V written at 0..bucket-1, batch 1 per
        graph call. Returns float32 logits (rows, bucket, V)."""
        n_seqs, n = input_ids.shape
        bucket = _find(self.context_buckets, n)
        assert n_seqs == cache_ids.shape[0], f"invalid n_active_seqs ({n_seqs} vs {cache_ids.shape[0]})"
        assert n <= bucket, f"invalid input prompt length ({n} <= {bucket})"
        ids = torch.zeros(n_seqs, bucket, dtype=input_ids.dtype)
        ids[:, :n] = input_ids
        pos = torch.arange(bucket).expand(n_seqs, bucket)
        out = [self.slots.run(ids[r:r + 1], pos[r:r + 1], start_ids.flatten()[r:r + 1].long())
               for r in range(n_seqs)]  # _context_dynamic_batching: one graph call per row
        return torch.cat(out)

    def _token_generation(self, input_ids, cache_ids, start_ids):
        """base.py 576-585: the full compiled batch, unlisted slots zero-filled; (B, V) logits in slot order."""
        batch = self.neuron_config.continuous_batching.batch_size_for_shared_caches
        full_input_ids = torch.zeros(batch, 1, dtype=input_ids.dtype)
        full_cache_ids = torch.zeros(batch, 1, dtype=input_ids.dtype)
        seq_ids_int64 = start_ids.flatten().unsqueeze(-1).to(torch.int64)
        full_input_ids.scatter_(dim=0, index=seq_ids_int64, src=input_ids)
        full_cache_ids.scatter_(dim=0, index=seq_ids_int64, src=cache_ids)  # dtype must equal input_ids'
        if int(full_cache_ids.max()) >= max(self.token_buckets):
            raise IndexError(f"cache id {int(full_cache_ids.max())} outside n_positions {self.token_buckets}")
        return self.slots.run(full_input_ids, full_cache_ids, torch.arange(batch))[:, 0]

    @recorded(_M + "forward")
    def forward(self, input_ids, cache_ids=None, start_ids=None, last_token_id=None, input_embeddings=None,
                **kwargs):
        self._require_compiled()
        cb = self.neuron_config.continuous_batching
        if start_ids is None or not cb or cache_ids is None:
            raise ContractViolation("static batching is not modelled: pass cache_ids and start_ids")
        n_seqs, n = input_ids.shape
        if n > 1 and cache_ids.flatten()[0].item() == 0:
            logits = self._context_rows(input_ids, cache_ids, start_ids)  # (rows, bucket, V)
            last = cache_ids.max(dim=1).values.long()  # base.py 443: last_token_id
            logits = logits[torch.arange(n_seqs), last]  # (rows, V)
            return self._sample(logits) if self.neuron_config.on_device_generation else logits
        if n > 1:
            raise ContractViolation("forward() with several tokens at a non-zero first cache id runs the context "
                                    "graph at those positions (base.py 520-539 pads them for speculation, but "
                                    "forward picks the context model); use speculative_forward")
        logits = self._token_generation(input_ids, cache_ids, start_ids)  # (B, V)
        out = self._sample(logits) if self.neuron_config.on_device_generation else logits
        seq_ids = start_ids.flatten()  # _postprocess 631-637
        if torch.equal(seq_ids, torch.arange(n_seqs)):
            return out[:n_seqs]
        return out[seq_ids.to(torch.long)]

    @recorded(_M + "speculative_forward")
    def speculative_forward(self, input_ids, cache_ids=None, start_ids=None, speculation_length=None):
        self._require_compiled()
        n_seqs, n = input_ids.shape
        if n > 1 and cache_ids.flatten()[0].item() == 0:
            # base.py 506: the context path for every row (cache ids arange(bucket), ids zero-padded), then the
            # speculation graph runs over those positions: positions 0..bucket-1 of every listed slot are rewritten.
            ROUTES.append("context")
            logits = self._context_rows(input_ids, cache_ids, start_ids)
            k = _find(sorted({k for k, _ in self.decoder_lm_head_for_speculation}), n)
            return logits[:, -k:].permute(1, 2, 0)
        ROUTES.append("speculation")
        spec_n_positions = _find(self.context_buckets, n)
        assert n <= spec_n_positions, f"invalid input prompt length ({n} <= {spec_n_positions})"
        prompt_buckets = sorted({k for k, _ in self.decoder_lm_head_for_speculation})
        bucket = _find(prompt_buckets, n)
        batches = [b for (_, b) in self.decoder_lm_head_for_speculation]
        assert n_seqs in batches, f"invalid batch size for speculative forward ({n_seqs} not in {batches})"
        pad = torch.full((n_seqs, bucket), max(self.context_buckets) - 1, dtype=cache_ids.dtype)
        for s in range(n_seqs):
            pad[s, :n] = cache_ids[s, :n]  # fails like torch when n > bucket
        ids = torch.zeros(n_seqs, bucket, dtype=input_ids.dtype)
        ids[:, :n] = input_ids
        if speculation_length is None:
            model_k = None  # model.py 322: the token-generation graph, then `-speculation_length` below fails
        else:  # model.py 324-328: an int never equals a (k, batch) key: the bucket comes from the input length
            model_k = _find(prompt_buckets, n)
            if (model_k, n_seqs) not in self.decoder_lm_head_for_speculation:
                raise KeyError((model_k, n_seqs))
        if int(pad.max()) >= max(self.token_buckets):
            raise IndexError(f"cache id {int(pad.max())} outside n_positions {self.token_buckets}")
        logits = self.slots.run(ids, pad, start_ids.flatten().long())  # (B, bucket, V)
        if self.neuron_config.on_device_generation:
            raise ContractViolation("speculative_forward with on-device generation returns ids; not modelled")
        return logits.permute(1, 2, 0)[-model_k:]  # (k, V, B); TypeError when speculation_length is None


# -- fused_speculation.py --------------------------------------------------------------------------------------------

_F = "transformers_neuronx.fused_speculation.FusedSpeculativeDecoder."


class FusedSpeculativeDecoder(torch.nn.Module):
    @recorded(_F + "__init__")
    def __init__(self, draft, target, k=2, pad_token_id=0, eos_token_id=None, buckets=None, output_scores=False,
                 deterministic_threshold=None, debug=False, simulation_acceptance_length=None):
        super().__init__()
        assert draft.neuron_config.on_device_embedding == True, (  # noqa: E712 (the library's own check)
            "The draft model must enable on-device embedding.")
        assert draft.neuron_config.on_device_generation is not None, (
            "The draft model must enable on-device sampling.")
        assert target.neuron_config.on_device_embedding == True, (  # noqa: E712
            "The target model must enable on-device embedding.")
        assert target.neuron_config.on_device_generation is not None, (
            "The target model must enable on-device sampling.")
        assert target.config.vocab_size == draft.config.vocab_size, (
            "The target model and draft model must have the same vocab size.")
        assert target.tp_degree == draft.tp_degree, "The target model and draft model must have the same tp degree."
        assert isinstance(k, int), "The k value must be an integer."
        if draft.batch_sizes != [1]:
            assert draft.neuron_config.padding_side == "right", (
                "The draft model must set padding_side as right for batch size > 1.")
        if target.batch_sizes != [1]:
            assert target.neuron_config.padding_side == "right", (
                "The target model must set padding_side as right for batch size > 1.")
        self.draft, self.target, self.k = draft, target, k
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.buckets = buckets if buckets is not None else target.token_buckets
        self.batch_sizes = target.batch_sizes
        self.speculator = None

    @recorded(_F + "to_neuron")
    def to_neuron(self, workers=None):
        if not (self.draft.compiled and self.target.compiled):
            # 488-489 `valid_parameters` reads the weights and caches that the models' own to_neuron() loaded
            raise AttributeError("'NoneType' object has no attribute ... (to_neuron() the draft and target first)")
        COMPILES.extend(f"fused-k{self.k}-b{b}-n{n}" for b in self.batch_sizes for n in self.buckets)
        self.speculator = "compiled"

    @recorded(_F + "speculative_iteration")
    def speculative_iteration(self, input_ids, cache_ids, start_ids):
        if self.speculator is None:
            raise AttributeError("'NoneType' object has no attribute 'execute' (call to_neuron() first)")
        batch_size, _ = input_ids.shape
        min_values_per_row, _ = torch.min(cache_ids, dim=-1)
        if (min_values_per_row == 0).any():  # 767-800: context decoding for the whole call
            ROUTES.append("context")
            target_next_id = self.target(input_ids, cache_ids, start_ids).reshape(batch_size, -1)
            self.draft(input_ids, cache_ids, start_ids)
            return target_next_id, torch.tensor([[1]] * batch_size)
        ROUTES.append("fused")
        seq_ids = start_ids.flatten().to(torch.long)
        graph_batch_size = self.batch_sizes[0]
        full_input_ids, cache_ids_pad = [self.preprocess_input(t, seq_ids, graph_batch_size)
                                         for t in (input_ids, cache_ids)]
        tokens, counts = self._speculator(full_input_ids, cache_ids_pad.long())
        output_tokens, output_counts = [self.postprocess_output(t, seq_ids) for t in (tokens, counts)]
        return self.speculative_iteration_post_process(output_tokens, output_counts)

    def _speculator(self, ids: torch.Tensor, pos: torch.Tensor):
        """`_fused_hlo_with_standalone_draft` (150-216) + token selection (386-425), greedy: ids, pos (B, 1)."""
        B, k = ids.shape[0], self.k  # noqa: N806
        if int(pos.max()) + k >= self.buckets[-1]:
            raise IndexError(f"cache ids {pos.flatten().tolist()} + k {k} outside the buckets {self.buckets}")
        slots = torch.arange(B)
        tok, drafts = ids.long(), []
        for j in range(k + 1):  # k drafted tokens, then the last one fed so every position has draft K/V
            step = self.draft.slots.run(tok, pos + j, slots)[:, 0].argmax(-1, keepdim=True)
            if j < k:
                drafts.append(step)
                tok = step
        drafts = torch.cat(drafts, dim=1)  # (B, k)
        verify = torch.cat([ids.long(), drafts], dim=1)  # (B, k+1)
        target = self.target.slots.run(verify, pos + torch.arange(k + 1), slots).argmax(-1)  # (B, k+1)
        index = (drafts == target[:, :-1]).long().cumprod(dim=1).sum(dim=1, keepdim=True)  # accepted drafts (B, 1)
        next_tokens = torch.where(torch.arange(k + 1) <= index, target, self.pad_token_id).to(torch.int32)
        return next_tokens, (index + 1).to(torch.int32)

    def preprocess_input(self, tensor, seq_ids, target_batch_size):
        output_tensor = torch.zeros((target_batch_size,) + tuple(tensor.shape[1:]), dtype=tensor.dtype)
        output_tensor[seq_ids] = tensor
        return output_tensor

    def postprocess_output(self, tensor, seq_ids):
        return tensor[seq_ids]

    def speculative_iteration_post_process(self, output_tokens, output_counts):
        non_pad_value = output_tokens[0, 0]  # 226-228: every pad id in the tokens becomes tokens[0, 0]
        output_tokens[output_tokens == self.pad_token_id] = non_pad_value
        result_tokens = torch.full_like(output_tokens, fill_value=self.pad_token_id)
        for i in range(output_tokens.size(0)):
            result_tokens[i, :output_counts[i].item()] = output_tokens[i, :output_counts[i].item()]
        return result_tokens, output_counts


def install(monkeypatch) -> None:
    """Register the fake as `transformers_neuronx` for the duration of a test."""
    COMPILES.clear()
    ROUTES.clear()
    root = types.ModuleType("transformers_neuronx")
    root.__version__ = VERSION
    config = types.ModuleType("transformers_neuronx.config")
    config.NeuronConfig, config.ContinuousBatchingConfig = NeuronConfig, ContinuousBatchingConfig
    config.GenerationConfig = GenerationConfig
    root.NeuronConfig, root.ContinuousBatchingConfig, root.GenerationConfig = (
        NeuronConfig, ContinuousBatchingConfig, GenerationConfig)
    llama = types.ModuleType("transformers_neuronx.llama")
    llama_model = types.ModuleType("transformers_neuronx.llama.model")
    llama_model.LlamaForSampling = LlamaForSampling
    root.LlamaForSampling = LlamaForSampling
    fused = types.ModuleType("transformers_neuronx.fused_speculation")
    fused.FusedSpeculativeDecoder = FusedSpeculativeDecoder
    root.config, root.llama, root.fused_speculation, llama.model = config, llama, fused, llama_model
    for name, mod in [("transformers_neuronx", root), ("transformers_neuronx.config", config),
                      ("transformers_neuronx.llama", llama), ("transformers_neuronx.llama.model", llama_model),
                      ("transformers_neuronx.fused_speculation", fused)]:
        monkeypatch.setitem(sys.modules, name, mod)
