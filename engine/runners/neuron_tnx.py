"""`TnxRunner`: transformers-neuronx (`LlamaForSampling` + continuous batching) behind the `Runner` protocol.

transformers-neuronx reached end of support in Neuron SDK 2.26; the last AWS inference container shipping it is
`public.ecr.aws/neuron/pytorch-inference-neuronx:2.7.0-neuronx-py310-sdk2.25.0-ubuntu22.04` (Python 3.10, torch 2.7).
The library is imported only inside functions, so this module imports (and registers `neuron-tnx`) everywhere.

Checked against aws-neuron/transformers-neuronx 1ade6d7 (0.13.x, the last public sync, what SDK 2.25 ships); file:line
below are at that commit, paths under src/transformers_neuronx/. Calls (see neuron_common.py for which slots each call
lists and where free rows go):

    LlamaForSampling.from_pretrained(path, batch_size=max_slots, n_positions=[token buckets],
        context_length_estimate=[context buckets], tp_degree=..., amp=..., neuron_config=NeuronConfig(
        continuous_batching=ContinuousBatchingConfig(batch_size_for_shared_caches=max_slots)))   llama/model.py 32
    model.enable_speculative_decoder([k + 1 for k in K])   graphs keyed (k + 1, batch), base.py 122-132
    model.load(dir) (optional) ; model.to_neuron() ; model.save(dir)                       base.py 39-89
    model.forward(ids (1, n), cache_ids=arange(n), start_ids=[slot])  -> (1, V)   context encoding (n >= 2), base.py 506
    model.forward(ids (R, 1), cache_ids (R, 1), start_ids (R,))       -> (R, V)   token generation, base.py 576-585
    model.speculative_forward(ids (B, m), cache_ids (B, m), start_ids (B,), speculation_length=m) -> (m, V, B)
                                                                                  llama/model.py 308-349

- Every id tensor is int64 (what vLLM's Neuron worker passes): token generation builds `full_cache_ids` with the
  INPUT IDS' dtype and scatters the caller's cache ids into it (base.py 576-585), so int32 cache ids next to int64 ids
  fail with "scatter(): Expected self.dtype to be equal to src.dtype".
- `speculative_forward` finds its graph from the input length: the int `speculation_length` never equals a (k, batch)
  key (llama/model.py 324-328), but None would pick the token-generation graph; a shorter input would be padded with
  cache id max(context buckets) - 1 (base.py 565-569), so the runner always sends exactly a compiled length; that
  length may not exceed the largest context bucket (base.py 553-555); all `batch_size` rows (559-561).
- Context encoding pads to its bucket and writes K/V for positions 0..bucket-1 (base.py 464-466).

Fused mode (`--neuron-fused-speculation`): `FusedSpeculativeDecoder(draft, target, k)` (fused_speculation.py 281) runs
draft and target in one graph and samples on device. It asserts on-device embedding and generation on both models
(295-306), so both are built with `on_device_embedding=True, on_device_generation=GenerationConfig(do_sample=False)`
and then their `forward` returns token ids, not logits. It is a plain `nn.Module` (no `load`/`save`): draft and target
are compiled (or loaded from the cache dir) first, then the fused graph is built at every start (`to_neuron`, 464).
`speculative_iteration(ids (R, 1), cache_ids (R, 1), start_ids (R,))` (746) returns `(tokens (R, k+1), counts
(R, 1))`; if ANY row has cache id 0 the whole call is a plain decode (counts 1, 767-800), so free slots are left out
(the library zero-pads them, 871-895) and a live slot sitting out is fed at a position >= 1. `pad_token_id` is set to
the vocabulary size: the post-processing replaces every pad id in the tokens with the first row's first token
(220-235), which with the default 0 corrupts a real token 0. The engine does no speculation of its own
(`allowed_k = (0,)`); the runner hands the device's tokens over one per step as one-hot logits and calls the device
again only when a sequence has used up the tokens whose K/V the device already wrote. Rows carry no sampling
parameters, so `check_params` refuses anything but plain greedy decoding.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from engine.errors import InvalidRequestError
from engine.runners.base import ForwardBatch, Runner, RunnerInfo
from engine.runners.neuron_common import (
    SlotKVRunner,
    amp_for,
    cache_dir_for,
    is_cache_hit,
    library_missing,
    log_compile,
    mark_complete,
    neuron_device_missing,
    resolve_buckets,
    timed,
)
from engine.runners.options import NeuronOptions
from engine.runners.registry import Backend, RunnerSpec, register_backend

log = logging.getLogger("specserve.engine")

BACKEND = "neuron-tnx"
WHERE = "the Neuron SDK 2.25 inference container (pytorch-inference-neuronx:2.7.0-neuronx-py310-sdk2.25.0)"
IDS = torch.int64  # token, cache and slot ids: one dtype (base.py 576-585 scatters cache ids into an ids-typed tensor)


def available() -> str | None:
    return library_missing("transformers_neuronx", "transformers-neuronx", WHERE) or neuron_device_missing()


def _one_hot(token: int, vocab: int) -> torch.Tensor:
    row = torch.full((vocab,), float("-inf"))
    row[token] = 0.0
    return row


class TnxRunner(SlotKVRunner):
    """`LlamaForSampling` returning logits: the engine drafts and verifies (window graphs per compiled K + 1)."""

    def __init__(self, model, *, vocab_size: int, spec: RunnerSpec, context_buckets: tuple[int, ...],
                 window_lengths: tuple[int, ...], allowed_k: tuple[int, ...], amp: str):
        super().__init__(vocab_size=vocab_size, max_slots=spec.max_slots, max_model_len=spec.max_model_len,
                         context_buckets=context_buckets, window_lengths=window_lengths, allowed_k=allowed_k,
                         backend=BACKEND, dtype={"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[amp])
        self.model = model

    # -- backend calls ---------------------------------------------------------------------------------------------

    def _context(self, slot: int, tokens: list[int]) -> torch.Tensor:
        out = self._encode(slot, tokens)
        return out.reshape(-1, out.shape[-1])[-1, :self.vocab_size].float()  # (1, V) -> (V,)

    def _encode(self, slot: int, tokens: list[int]):
        ids = torch.tensor([tokens], dtype=IDS)  # (1, n), n >= 2: context encoding of this slot only (base.py 506)
        cache_ids = torch.arange(len(tokens), dtype=IDS).unsqueeze(0)
        start_ids = torch.tensor([slot], dtype=IDS)
        return self.model.forward(ids, cache_ids=cache_ids, start_ids=start_ids)

    def _decode(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        # Free rows are left out: the library writes token 0 at their position 0 (base.py 576-585), same branch.
        idx = live.nonzero().flatten()
        logits = self.model.forward(ids[idx].to(IDS), cache_ids=pos[idx].to(IDS), start_ids=slots[idx].to(IDS))
        out = torch.zeros(ids.shape[0], self.vocab_size)
        out[idx] = logits.reshape(len(idx), -1)[:, :self.vocab_size].float()  # rows in listed order (_postprocess)
        return out

    def _window(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        B, m = ids.shape  # noqa: N806  all rows: the graph is compiled for the full batch; free rows at 1..m
        logits = self.model.speculative_forward(ids.to(IDS), cache_ids=pos.to(IDS), start_ids=slots.to(IDS),
                                                speculation_length=m)
        return logits.permute(2, 0, 1)[:, :, :self.vocab_size].float()  # (m, V, B) -> (B, m, V)


class FusedTnxRunner(TnxRunner):
    """Fused mode (see the module docstring): draft and target in one device graph that samples greedily. The engine
    does no speculation of its own (`allowed_k = (0,)`); the device's tokens are handed over one per step."""

    def __init__(self, model, draft, fused, *, vocab_size: int, spec: RunnerSpec, context_buckets: tuple[int, ...],
                 amp: str):
        super().__init__(model, vocab_size=vocab_size, spec=spec, context_buckets=context_buckets,
                         window_lengths=(), allowed_k=(0,), amp=amp)
        self.fused = (fused, draft)  # (FusedSpeculativeDecoder, draft model)
        self.ahead: list[list[int]] = [[] for _ in range(spec.max_slots)]  # device tokens not yet handed out
        self.written: list[int] = [0] * spec.max_slots  # positions < written[s] hold device-written K/V

    def _context(self, slot: int, tokens: list[int]) -> torch.Tensor:
        out = self._encode(slot, tokens)
        # on-device generation: the target returned its next token id; the draft keeps its own cache
        ids = torch.tensor([tokens], dtype=IDS)
        self.fused[1].forward(ids, cache_ids=torch.arange(len(tokens), dtype=IDS).unsqueeze(0),
                              start_ids=torch.tensor([slot], dtype=IDS))
        self.ahead[slot], self.written[slot] = [], len(tokens)
        return _one_hot(int(out.reshape(-1)[0]), self.vocab_size)

    def check_params(self, params) -> None:
        limits = [
            (params.temperature > 0 and params.top_k != 1, "temperature",
             "must be 0 (or top_k 1): fused speculation samples greedily on the Neuron device"),
            (params.min_p > 0, "min_p", "is not supported with fused speculation"),
            (params.has_penalties, "presence_penalty" if params.presence_penalty else
             "frequency_penalty" if params.frequency_penalty else "repetition_penalty",
             "is not supported with fused speculation (sampling runs on the device)"),
            (bool(params.logit_bias), "logit_bias", "is not supported with fused speculation"),
            (params.logprobs is not None, "logprobs", "are not available with fused speculation"),
            # the engine would mask EOS in a one-hot row, leave only -inf and emit token 0
            (params.min_tokens > 0, "min_tokens", "is not supported with fused speculation (the device picks the "
             "tokens, EOS included)"),
        ]
        for bad, param, why in limits:
            if bad:
                raise InvalidRequestError(f"{param} {why}; this server runs --neuron-fused-speculation", field=param)

    def release_slot(self, slot: int) -> None:
        super().release_slot(slot)
        self.ahead[slot], self.written[slot] = [], 0

    def warmup(self) -> None:
        n = min(16, self.max_context)
        self.execute(ForwardBatch([0], [[0] * n], [0], [1]))
        self.execute(ForwardBatch([0], [[0]], [n], [1]))
        self.release_slot(0)

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        self._validate(batch)
        out = torch.empty(batch.total_logits, self.vocab_size, dtype=torch.float32)
        decode = []  # (row index, output offset)
        offset = 0
        for i, (slot, toks, start, nl) in enumerate(
                zip(batch.slot_ids, batch.token_ids, batch.start_pos, batch.num_logits, strict=True)):
            if start == 0 or self.pending[slot]:
                row = self._prefill(slot, toks, start, nl, offset, out)
                if row is not None and row.start == 0 and len(row.tokens) == 1:
                    decode.append((i, offset))  # a one-token prompt: decoded at position 0 with every live slot
                elif row is not None:
                    raise ValueError("fused speculation: a prompt must fit the largest context bucket")
            elif len(toks) != 1:
                raise ValueError("fused speculation verifies on the device: rows carry one token "
                                 "(the engine's own speculation must be off, allowed_k = (0,))")
            else:
                decode.append((i, offset))
            offset += nl
        if decode:
            self._fused_decode(batch, decode, out)
        return out

    def _fused_decode(self, batch: ForwardBatch, rows: list[tuple[int, int]], out: torch.Tensor) -> None:
        def served(i: int) -> bool:  # the fed token is the next device token and its K/V is already written
            slot, tok, pos = batch.slot_ids[i], batch.token_ids[i][0], batch.start_pos[i]
            return len(self.ahead[slot]) >= 2 and self.ahead[slot][0] == tok and pos < self.written[slot]

        if not all(served(i) for i, _ in rows):
            self._fused_iteration(batch, [i for i, _ in rows])
        for i, off in rows:
            slot = batch.slot_ids[i]
            self.history[slot][batch.start_pos[i]:] = [batch.token_ids[i][0]]
            self.ahead[slot].pop(0)  # the fed token; the device's next token follows it
            out[off] = _one_hot(self.ahead[slot][0], self.vocab_size)

    def _fused_iteration(self, batch: ForwardBatch, rows: list[int]) -> None:
        """One fused draft+verify pass over every live slot; free slots are left to the library's zero padding."""
        feed: dict[int, tuple[int, int]] = {}  # slot -> (token, cache id)
        for slot, hist in enumerate(self.history):
            if hist:  # live, sitting out: re-feed its last token (same K/V); one held token: filler at position 1
                feed[slot] = (hist[-1], len(hist) - 1) if len(hist) >= 2 else (hist[0], 1)
        for i in rows:
            feed[batch.slot_ids[i]] = (batch.token_ids[i][0], batch.start_pos[i])
        slots = sorted(feed)
        ids = torch.tensor([[feed[s][0]] for s in slots], dtype=IDS)  # (R, 1)
        pos = torch.tensor([[feed[s][1]] for s in slots], dtype=IDS)  # (R, 1)
        tokens, counts = self.fused[0].speculative_iteration(ids, pos, torch.tensor(slots, dtype=IDS))
        self.calls["decode"] += 1
        in_batch = {batch.slot_ids[i] for i in rows}
        for r, slot in enumerate(slots):
            if slot in in_batch:
                # The fed token and the accepted drafts are written: positions pos .. pos + count - 1.
                c = int(counts.reshape(-1)[r])
                self.ahead[slot] = [int(ids[r, 0])] + [int(t) for t in tokens[r, :c]]
                self.written[slot] = int(pos[r, 0]) + c
            else:  # its drafts overwrote positions past its end: nothing ahead is trustworthy
                self.ahead[slot], self.written[slot] = [], len(self.history[slot])


class FusedDraftStub(Runner):
    """The draft 'runner' in fused mode: the target runner owns the draft model; this never runs (allowed_k = (0,))."""

    def __init__(self, vocab_size: int, spec: RunnerSpec):
        self._info = RunnerInfo(vocab_size=vocab_size, max_slots=spec.max_slots, max_model_len=spec.max_model_len,
                                allowed_k=(0,), device="neuron", backend=BACKEND)

    def info(self) -> RunnerInfo:
        return self._info

    def warmup(self) -> None:
        pass

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        raise RuntimeError("fused speculation drafts on the device; the engine's draft proposer must not run")

    def release_slot(self, slot: int) -> None:
        pass


def _vocab(path: str) -> int:
    return int(json.loads((Path(path) / "config.json").read_text())["vocab_size"])


def _load(path: str, spec: RunnerSpec, opts: NeuronOptions, ctx: tuple[int, ...], tok: tuple[int, ...],
          lengths: tuple[int, ...], fused: bool = False):
    """Construct a LlamaForSampling for `path` and enable its speculation graphs (not compiled yet)."""
    from transformers_neuronx.config import ContinuousBatchingConfig, GenerationConfig, NeuronConfig
    from transformers_neuronx.llama.model import LlamaForSampling

    extra = {}
    if fused:  # fused_speculation.py 295-306 asserts both; greedy is the only sampling the engine can hand over
        extra = {"on_device_embedding": True, "on_device_generation": GenerationConfig(do_sample=False)}
    ncfg = NeuronConfig(continuous_batching=ContinuousBatchingConfig(batch_size_for_shared_caches=spec.max_slots),
                        **extra)
    model = LlamaForSampling.from_pretrained(
        path, batch_size=spec.max_slots, n_positions=list(tok), context_length_estimate=list(ctx),
        tp_degree=opts.tp_degree, amp=amp_for(spec.dtype), neuron_config=ncfg)
    if lengths:
        model.enable_speculative_decoder(list(lengths))
    return model


def _compile(model, path: str, key: dict, opts: NeuronOptions) -> None:
    """to_neuron(), reusing saved graphs from --neuron-compiled-dir when they match this configuration."""
    cache = cache_dir_for(opts.compiled_dir, "tnx", path, key)
    hit = is_cache_hit(cache)
    if hit:
        model.load(str(cache))  # base.py 50: read NEFFs from here in to_neuron instead of compiling
    _, seconds = timed(model.to_neuron)
    if cache is not None and not hit:
        cache.mkdir(parents=True, exist_ok=True)
        model.save(str(cache))
        mark_complete(cache, key, seconds)
    log_compile(BACKEND, key["role"], cache, hit, seconds)


def build(path: str, spec: RunnerSpec) -> Runner:
    opts = spec.neuron
    vocab = _vocab(path)
    if opts.fused_speculation and spec.role == "draft":
        return FusedDraftStub(vocab, spec)
    ctx, tok = resolve_buckets(opts, spec.max_model_len)
    ks = tuple(sorted(k for k in opts.k_values if k > 0))
    lengths = tuple(k + 1 for k in ks)
    if spec.role == "draft":  # the draft verifies nothing; 2-token windows cover its catch-up after a verify
        lengths = tuple(sorted(set(lengths) | {2}))
    if lengths and max(lengths) > max(ctx):
        raise ValueError(f"speculation length {max(lengths)} exceeds the largest context bucket {max(ctx)}: "
                         "transformers-neuronx looks the speculative input up in the context buckets (base.py 553-555)")
    key = {"role": spec.role, "slots": spec.max_slots, "ctx": ctx, "tok": tok, "lengths": lengths,
           "tp": opts.tp_degree, "amp": amp_for(spec.dtype), "fused": opts.fused_speculation}
    if opts.fused_speculation:
        if not opts.draft_model or not ks:
            raise ValueError("--neuron-fused-speculation needs --draft-model and a K (--num-speculative-tokens or "
                             "--neuron-k-values)")
        from transformers_neuronx.fused_speculation import FusedSpeculativeDecoder

        from engine.models.loader import resolve_model_path

        draft_path = str(resolve_model_path(opts.draft_model))
        model = _load(path, spec, opts, ctx, tok, (), fused=True)
        draft = _load(draft_path, spec, opts, ctx, tok, (), fused=True)
        _compile(model, path, key, opts)
        _compile(draft, draft_path, {**key, "role": "fused-draft"}, opts)
        fsd = FusedSpeculativeDecoder(draft, model, max(ks), pad_token_id=vocab)
        _, seconds = timed(fsd.to_neuron)  # an nn.Module without save/load: built at every start
        log.info("%s: fused speculator (k=%d) built in %.1fs", BACKEND, max(ks), seconds)
        return FusedTnxRunner(model, draft, fsd, vocab_size=vocab, spec=spec, context_buckets=ctx,
                              amp=amp_for(spec.dtype))
    model = _load(path, spec, opts, ctx, tok, lengths)
    _compile(model, path, key, opts)
    return TnxRunner(model, vocab_size=vocab, spec=spec, context_buckets=ctx, window_lengths=lengths,
                     allowed_k=(0, *ks), amp=amp_for(spec.dtype))


register_backend(Backend(BACKEND, build, available))
