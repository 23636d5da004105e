"""`TnxRunner`: transformers-neuronx (`LlamaForSampling` + continuous batching) behind the `Runner` protocol.

transformers-neuronx reached end of support in Neuron SDK 2.26; the last AWS inference container shipping it is
`public.ecr.aws/neuron/pytorch-inference-neuronx:2.7.0-neuronx-py310-sdk2.25.0-ubuntu22.04` (Python 3.10, torch 2.7).
The library is imported only inside functions, so this module imports (and registers `neuron-tnx`) everywhere.

Calls made (written against transformers-neuronx 0.13 `base.py`/`llama/model.py`; see neuron_common.py for why every
call lists every slot):

    LlamaForSampling.from_pretrained(path, batch_size=max_slots, n_positions=[token buckets],
        context_length_estimate=[context buckets], tp_degree=..., amp='bf16',
        neuron_config=NeuronConfig(continuous_batching=ContinuousBatchingConfig(batch_size_for_shared_caches=max_slots)))
    model.enable_speculative_decoder([k + 1 for k in K])   # graphs with k+1 active tokens per row
    model.load(dir) / model.to_neuron() / model.save(dir)
    model.forward(ids (1, n), cache_ids=(1, n) positions 0..n-1, start_ids=(1,) slot)       context encoding
    model.forward(ids (B, 1), cache_ids=(B, 1), start_ids=(B,) slot ids)                      decode -> (B, V)
    model.speculative_forward(ids (B, m), cache_ids=(B, m), start_ids=(B,), speculation_length=m)
        -> (m, V, B): base.py returns `logits[:vocab, -m:, :].transpose(0, 1)`

Unsure (no library here to check): whether context-encoding `forward` returns `(1, V)` or `(B, V)` logits under
continuous batching (we take the last row), and the exact layout of `speculative_forward`'s result across versions
(`_spec_logits` accepts `(m, V, B)` and `(B, m, V)`).

Fused mode (`--neuron-fused-speculation`): `FusedSpeculativeDecoder(draft, target, k)` runs draft and target in one
graph and samples on device; `speculative_iteration(ids (B, 1), cache_ids (B, 1), start_ids (B,))` returns
`(tokens (B, k+1), counts (B,))` (the call vLLM's tnx integration makes). The engine then does no speculation of its own
(`allowed_k = (0,)`); the runner hands the device's tokens to the engine one per step as one-hot logits and calls the
device again only when a sequence has used up the tokens whose K/V the device already wrote. On-device sampling is
compiled greedy, and per-request sampling parameters cannot reach the fused graph (rows carry no parameters), so
`check_params` refuses anything but greedy decoding: temperature > 0 (unless top_k = 1), top_k > 1 with
temperature > 0, min_p, presence/frequency/repetition penalties, logit_bias and logprobs (the engine would see only
one-hot logits).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from engine.errors import InvalidRequestError
from engine.runners.base import ForwardBatch, Runner, RunnerInfo
from engine.runners.neuron_common import (
    NeuronOptions,
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
from engine.runners.registry import Backend, RunnerSpec, register_backend

log = logging.getLogger("specserve.engine")

BACKEND = "neuron-tnx"
WHERE = "the Neuron SDK 2.25 inference container (pytorch-inference-neuronx:2.7.0-neuronx-py310-sdk2.25.0)"


def available() -> str | None:
    return library_missing("transformers_neuronx", "transformers-neuronx", WHERE) or neuron_device_missing()


def _spec_logits(logits: torch.Tensor, batch: int, m: int) -> torch.Tensor:
    """speculative_forward's result -> (B, m, V)."""
    if logits.dim() == 3 and logits.shape[0] == m and logits.shape[2] == batch:
        return logits.permute(2, 0, 1)
    return logits.reshape(batch, m, -1)


class TnxRunner(SlotKVRunner):
    def __init__(self, model, *, vocab_size: int, spec: RunnerSpec, context_buckets: tuple[int, ...],
                 window_lengths: tuple[int, ...], allowed_k: tuple[int, ...], amp: str, fused=None):
        super().__init__(vocab_size=vocab_size, max_slots=spec.max_slots, max_model_len=spec.max_model_len,
                         context_buckets=context_buckets, window_lengths=window_lengths,
                         allowed_k=(0,) if fused is not None else allowed_k, backend=BACKEND,
                         dtype={"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[amp])
        self.model = model
        self.fused = fused  # (FusedSpeculativeDecoder, draft model) in fused mode
        self.ahead: list[list[int]] = [[] for _ in range(spec.max_slots)]  # fused: device tokens not yet handed out
        self.written: list[int] = [0] * spec.max_slots  # fused: positions < written[s] hold device-written K/V

    # -- backend calls ---------------------------------------------------------------------------------------------

    def _context(self, slot: int, tokens: list[int]) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long)
        cache_ids = torch.arange(len(tokens), dtype=torch.int32).unsqueeze(0)
        start_ids = torch.tensor([slot], dtype=torch.int32)
        logits = self.model.forward(ids, cache_ids=cache_ids, start_ids=start_ids)
        if self.fused is not None:  # the draft keeps its own cache: encode the prompt there too
            self.fused[1].forward(ids, cache_ids=cache_ids, start_ids=start_ids)
            self.ahead[slot], self.written[slot] = [], len(tokens)
        return logits.reshape(-1, logits.shape[-1])[-1, :self.vocab_size].float()

    def _decode(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        logits = self.model.forward(ids, cache_ids=pos.to(torch.int32), start_ids=slots.to(torch.int32))
        return logits.reshape(ids.shape[0], -1)[:, :self.vocab_size].float()

    def _window(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        B, m = ids.shape  # noqa: N806
        logits = self.model.speculative_forward(ids, cache_ids=pos.to(torch.int32), start_ids=slots.to(torch.int32),
                                                speculation_length=m)
        return _spec_logits(logits, B, m)[:, :, :self.vocab_size].float()

    # -- fused mode ------------------------------------------------------------------------------------------------

    def check_params(self, params) -> None:
        if self.fused is None:
            return
        limits = [
            (params.temperature > 0 and params.top_k != 1, "temperature",
             "must be 0 (or top_k 1): fused speculation samples greedily on the Neuron device"),
            (params.min_p > 0, "min_p", "is not supported with fused speculation"),
            (params.has_penalties, "presence_penalty" if params.presence_penalty else
             "frequency_penalty" if params.frequency_penalty else "repetition_penalty",
             "is not supported with fused speculation (sampling runs on the device)"),
            (bool(params.logit_bias), "logit_bias", "is not supported with fused speculation"),
            (params.logprobs is not None, "logprobs", "are not available with fused speculation"),
        ]
        for bad, param, why in limits:
            if bad:
                raise InvalidRequestError(f"{param} {why}; this server runs --neuron-fused-speculation", param=param)

    def release_slot(self, slot: int) -> None:
        super().release_slot(slot)
        self.ahead[slot], self.written[slot] = [], 0

    def warmup(self) -> None:
        if self.fused is None:
            return super().warmup()
        self.execute(ForwardBatch([0], [[0] * min(16, self.max_context)], [0], [1]))
        self.execute(ForwardBatch([0], [[0]], [min(16, self.max_context)], [1]))
        self.release_slot(0)

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        if self.fused is None:
            return super().execute(batch)
        self._validate(batch)
        out = torch.empty(batch.total_logits, self.vocab_size, dtype=torch.float32)
        decode = []  # (row index, output offset)
        offset = 0
        for i, (slot, toks, start, nl) in enumerate(
                zip(batch.slot_ids, batch.token_ids, batch.start_pos, batch.num_logits, strict=True)):
            if start == 0 or self.pending[slot]:
                row = self._prefill(slot, toks, start, nl, offset, out)
                if row is not None and row.start == 0 and len(row.tokens) == 1:
                    decode.append((i, offset))  # a one-token prompt is a fused decode at position 0
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
            out[off] = torch.full((self.vocab_size,), float("-inf"))
            out[off, self.ahead[slot][0]] = 0.0

    def _fused_iteration(self, batch: ForwardBatch, rows: list[int]) -> None:
        """One fused draft+verify pass over every slot; rows not in the batch re-feed their last token."""
        B = self.max_slots  # noqa: N806
        ids = torch.zeros(B, 1, dtype=torch.long)
        pos = torch.zeros(B, 1, dtype=torch.long)
        for slot in range(B):
            hist = self.history[slot]
            if hist:
                ids[slot, 0], pos[slot, 0] = hist[-1], len(hist) - 1
        for i in rows:
            slot = batch.slot_ids[i]
            ids[slot, 0], pos[slot, 0] = batch.token_ids[i][0], batch.start_pos[i]
        tokens, counts = self.fused[0].speculative_iteration(ids, pos.to(torch.int32),
                                                             torch.arange(B, dtype=torch.int32))
        self.calls["decode"] += 1
        in_batch = {batch.slot_ids[i] for i in rows}
        for slot in range(B):
            if slot in in_batch:
                # The fed token and the accepted drafts are written: positions pos .. pos + count - 1.
                c = int(counts[slot])
                self.ahead[slot] = [int(ids[slot, 0])] + [int(t) for t in tokens[slot, :c]]
                self.written[slot] = int(pos[slot, 0]) + c
            else:  # its drafts overwrote positions past its end: nothing ahead is trustworthy
                self.ahead[slot], self.written[slot] = [], len(self.history[slot])


class FusedDraftStub:
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
          lengths: tuple[int, ...]):
    """Construct a LlamaForSampling for `path` and enable its speculation graphs (not compiled yet)."""
    from transformers_neuronx.config import ContinuousBatchingConfig, NeuronConfig
    from transformers_neuronx.llama.model import LlamaForSampling

    ncfg = NeuronConfig(continuous_batching=ContinuousBatchingConfig(batch_size_for_shared_caches=spec.max_slots))
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
        model.load(str(cache))
    _, seconds = timed(model.to_neuron)
    if cache is not None and not hit:
        cache.mkdir(parents=True, exist_ok=True)
        model.save(str(cache))
        mark_complete(cache, key, seconds)
    log_compile(BACKEND, key["role"], cache, hit, seconds)


def build(path: str, spec: RunnerSpec) -> Runner:
    opts = NeuronOptions.from_spec(spec)
    vocab = _vocab(path)
    if opts.fused_speculation and spec.role == "draft":
        return FusedDraftStub(vocab, spec)
    ctx, tok = resolve_buckets(opts, spec.max_model_len)
    ks = tuple(sorted(k for k in opts.k_values if k > 0))
    lengths = tuple(k + 1 for k in ks)
    if spec.role == "draft":  # the draft verifies nothing; 2-token windows cover its catch-up after a verify
        lengths = tuple(sorted(set(lengths) | {2}))
    key = {"role": spec.role, "slots": spec.max_slots, "ctx": ctx, "tok": tok, "lengths": lengths,
           "tp": opts.tp_degree, "amp": amp_for(spec.dtype), "fused": opts.fused_speculation}
    fused = None
    if opts.fused_speculation:
        if not opts.draft_model or not ks:
            raise ValueError("--neuron-fused-speculation needs --draft-model and a K (--num-speculative-tokens or "
                             "--neuron-k-values)")
        from transformers_neuronx.fused_speculation import FusedSpeculativeDecoder

        from engine.models.loader import resolve_model_path

        draft_path = str(resolve_model_path(opts.draft_model))
        model = _load(path, spec, opts, ctx, tok, ())
        draft = _load(draft_path, spec, opts, ctx, tok, ())
        fsd = FusedSpeculativeDecoder(draft, model, max(ks))
        _compile(fsd, path, {**key, "draft": Path(draft_path, "config.json").read_text()}, opts)
        fused, lengths = (fsd, draft), ()
    else:
        model = _load(path, spec, opts, ctx, tok, lengths)
        _compile(model, path, key, opts)
    return TnxRunner(model, vocab_size=vocab, spec=spec, context_buckets=ctx, window_lengths=lengths,
                     allowed_k=(0, *ks), amp=amp_for(spec.dtype), fused=fused)


register_backend(Backend(BACKEND, build, available))
