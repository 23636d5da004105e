"""`TorchRunner`: the compact Llama-family model on CPU or CUDA behind the `Runner` protocol.

It owns the model and one static slot KV cache `[layers, max_slots, kv_heads, max_model_len + 1, head_dim]` (the extra
position is the padding sink, see `engine/models/kv_cache.py`). `execute` packs the batch's rows into right-padded
tensors with a handful of torch ops (no per-token Python loop), runs one forward under `inference_mode`, and returns
float32 logits for the last `num_logits[i]` tokens of each row, rows in batch order.

Cost notes: attention reads only cache positions `[0, L)` with L the furthest position in the batch; contiguous slot ids
(always the case at batch 1) read the cache through a view, other batches copy just those L positions per row. A batch
in which every query may see all L positions (one decode row, or decode rows at equal positions) needs no mask.

dtype="auto": bfloat16 on CUDA when the GPU supports it, and on CPUs with native bf16 dot products (AVX512-BF16 or
AMX); float32 otherwise. On CPUs without those, bf16 matmuls are emulated and slower than fp32. The design notes measured
bf16 decode ~2x faster than fp32 on the development machine, and a K+1-token verify pass nearly free in bf16 only.
"""

from __future__ import annotations

import logging
import os
from itertools import chain

import torch

import engine.native as native_kernels
from engine.models.compiled import CompiledStep, set_cache_dir, share_weights_copy
from engine.models.config import ModelConfig
from engine.models.cpu_linear import pack_cpu_bf16_linears
from engine.models.draft_vocab import DRAFT_VOCAB_FILE, load_draft_vocab, restrict_head, widen_logits
from engine.models.invariant_attention import pad_context
from engine.models.kv_cache import KVCache
from engine.models.llama import LlamaForCausalLM, StepInputs
from engine.models.loader import load_model, resolve_model_path
from engine.runners.base import ForwardBatch, Runner, RunnerInfo

log = logging.getLogger("specserve.runner")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 dot products natively (x86 AVX512-BF16 / AMX)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - probe missing on this build
            pass
    return False


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """"auto" -> bf16 where it is fast (CUDA with bf16, CPU with AVX512-BF16/AMX), else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        return _DTYPES[dtype]
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


class TorchRunner(Runner):
    """Runner protocol over `LlamaForCausalLM` and a static slot KV cache."""

    def __init__(self, model: LlamaForCausalLM, *, max_slots: int, max_model_len: int, pack_weights: bool = True,
                 compile: bool = False, compile_cache_dir: str | None = None, batch_invariant: bool | None = None,
                 native: bool = True, head_token_ids: torch.Tensor | None = None):
        """`pack_weights`: on CPU in bf16, re-lay linear weights out for oneDNN once (see cpu_linear.py); the model
        is then inference-only and its linear layers no longer expose `.weight`.

        `compile`: decode/verify rows (up to 8 tokens each) run through `engine/models/compiled.py`, graphs built in
        `warmup` for decode and on first use for each verify length, kept in `compile_cache_dir` across restarts;
        prefill and anything the graphs do not cover stay eager.

        `batch_invariant` (None: on for bf16 on CPU without `compile`): attention through
        `engine/models/invariant_attention.py`, so a row's logits are the same bits whatever shares its pass (decode
        or verify, batch 1 or 64, prefill chunking). The linear layers already are on CPU (oneDNN bf16 GEMMs are
        row-invariant); fp32 GEMMs and CUDA kernels are not, so there it stays off (equal up to numerics).

        `native`: where the bf16 CPU path is batch-invariant and the hand-written kernels build (engine/native: a
        C++ compiler and AVX512-BF16), the linear layers and the whole decoder-layer loop run through them; the step
        is then one op call per pass instead of ~35 ATen ops per layer. Otherwise (or `native=False`) the eager path
        with oneDNN-packed linears; `self.native_reason` says why.

        `head_token_ids` (N,): a draft's reduced-vocabulary head (engine/models/draft_vocab.py): the head scores only
        these ids and `execute` widens its logits back to the full vocabulary."""
        cfg: ModelConfig = model.config
        if max_slots < 1 or max_model_len < 2:
            raise ValueError(f"need max_slots >= 1 and max_model_len >= 2, got {max_slots}, {max_model_len}")
        cfg.check_max_len(max_model_len)
        self.model = model.eval()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cfg = cfg
        self.max_slots, self.max_model_len = max_slots, max_model_len
        self.head_token_ids = None
        if head_token_ids is not None:
            restrict_head(model, head_token_ids)  # before the compiled twin and the packing copy the head
            self.head_token_ids = model.head_token_ids
        model.keep_residual_fp32()  # bf16/fp16 weights, fp32 residual stream and norms (near-ties, DESIGN.md)
        exact_here = self.device.type == "cpu" and self.dtype == torch.bfloat16 and not compile
        if batch_invariant is None:
            batch_invariant = exact_here
        elif batch_invariant and not exact_here:
            raise ValueError(f"batch-invariant attention is exact only for bfloat16 on CPU without torch.compile; this "
                             f"runner is {str(self.dtype).removeprefix('torch.')} on {self.device.type}"
                             f"{' with compile' if compile else ''} (use --batch-invariant auto or off)")
        self.batch_invariant = batch_invariant
        if batch_invariant:
            model.make_batch_invariant()
        # Invariant attention reads whole key blocks: room for max_model_len rounded up (never-written zeros, masked).
        cache_len = pad_context(max_model_len, capacity=1 << 62) if batch_invariant else max_model_len
        self.cache = KVCache.allocate(cfg, max_slots, cache_len, dtype=self.dtype, device=self.device)
        self._scratch = self.cache.scratch_pos
        self.compiled: CompiledStep | None = None
        if compile:
            set_cache_dir(compile_cache_dir)
            # A twin sharing every weight tensor, with plain nn.Linear layers for inductor (its freezing packs them
            # itself); the eager model below gets oneDNN-packed layers for prefill and uncovered shapes.
            self.compiled = CompiledStep(share_weights_copy(model), self.cache, max_slots=max_slots)
        self.packed_linears = 0
        if pack_weights and self.device.type == "cpu" and self.dtype == torch.bfloat16:
            self.packed_linears = pack_cpu_bf16_linears(model, native=native and batch_invariant)
        self.native_reason = self._use_native(native, pack_weights)

    def _use_native(self, wanted: bool, packed: bool) -> str | None:
        """Switch the model to the native decoder if it can run it; None when it does, else why not."""
        if not wanted:
            return "turned off"
        if not (self.batch_invariant and packed):  # fp32, CUDA, compile, --batch-invariant off: nothing to log
            return "only on the batch-invariant bf16 CPU path with packed weights"
        from engine.native.decoder import NativeDecoder, unsupported_reason

        reason = native_kernels.native_reason() or unsupported_reason(self.model)
        if reason is None:
            self.model.use_native(NativeDecoder(self.model))
            log.info("torch runner: native CPU kernels (engine/native) for the linears and the decoder layers")
        else:
            log.info("torch runner: native CPU kernels not used (%s); eager step", reason)
        return reason

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, max_slots: int, max_model_len: int,
                        dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
                        compile: bool = False, compile_cache_dir: str | None = None,
                        batch_invariant: bool | None = None, native: bool = True,
                        draft_vocab: bool = False) -> TorchRunner:
        """`draft_vocab`: use the checkpoint's reduced-vocabulary head if it has one (drafts only: a target's
        distribution must cover every token)."""
        dev = resolve_device(device)
        model = load_model(path_or_id, dtype=resolve_dtype(dtype, dev), device=dev)
        head_ids = None
        if draft_vocab:
            head_ids = load_draft_vocab(resolve_model_path(path_or_id), model.config.vocab_size)
            if head_ids is not None:
                log.info("draft head: %d of %d tokens (%s)", head_ids.numel(), model.config.vocab_size,
                         DRAFT_VOCAB_FILE)
        return cls(model, max_slots=max_slots, max_model_len=max_model_len, compile=compile,
                   compile_cache_dir=compile_cache_dir, batch_invariant=batch_invariant, native=native,
                   head_token_ids=head_ids)

    def info(self) -> RunnerInfo:
        return RunnerInfo(
            vocab_size=self.cfg.vocab_size, max_slots=self.max_slots, max_model_len=self.max_model_len,
            allowed_k=None, max_chunk_tokens=None, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."), backend="torch",
        )

    def warmup(self) -> None:
        """A prefill and a decode step on slot 0 (the engine overwrites slot 0 before using it)."""
        n = min(16, self.max_model_len - 1)
        self.execute(ForwardBatch(slot_ids=[0], token_ids=[[0] * n], start_pos=[0], num_logits=[1]))
        self.execute(ForwardBatch(slot_ids=[0], token_ids=[[0]], start_pos=[n], num_logits=[1]))
        if self.compiled is not None:  # the decode graphs, one per batch bucket (CPU: two, see compiled.py)
            for b in self.compiled.buckets:
                rows = list(range(b))
                for s in rows[1:]:
                    self.execute(ForwardBatch(slot_ids=[s], token_ids=[[0] * n], start_pos=[0], num_logits=[0]))
                self.execute(ForwardBatch(slot_ids=rows, token_ids=[[0]] * b, start_pos=[n] * b, num_logits=[1] * b))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def release_slot(self, slot: int) -> None:
        """Nothing to free: a slot's stale entries are overwritten by its next sequence."""

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        """Run every row; return float32 logits (batch.total_logits, vocab), rows in batch order."""
        with torch.inference_mode():
            inp = self._pack(batch)
            if inp is None:  # no rows
                return torch.empty(0, self.cfg.vocab_size, dtype=torch.float32, device=self.device)
            if self.compiled is not None:
                logits = self.compiled(inp)  # None: a shape the graphs do not cover, or compiling failed
                if logits is not None:
                    return self._full_vocab(logits)
            return self._full_vocab(self.model(inp, self.cache))

    def _full_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, vocab or head subset) model-dtype logits -> (N, vocab) float32."""
        if self.head_token_ids is None:
            return logits.float()
        return widen_logits(logits, self.head_token_ids, self.cfg.vocab_size)

    def _pack(self, batch: ForwardBatch) -> StepInputs | None:
        """Rows -> right-padded (B, S) tensors, positions (padding -> scratch), logits indices and the mask."""
        B = batch.num_rows  # noqa: N806
        if B == 0:
            return None
        lens = [len(t) for t in batch.token_ids]
        S = max(lens)  # noqa: N806
        native = self.model.native is not None
        if self.batch_invariant and not native and B == 1 and S == 1:
            # A lone token becomes a row of 2 (the second padding, written to scratch): oneDNN's bf16 GEMM with one
            # row takes another kernel whose sums differ in the last bit for K >= 1536 (SmolLM2's down_proj:
            # 178 of 1.15 M outputs), while every M >= 2 agrees. Memory-bound, the second row is nearly free.
            S = 2  # noqa: N806
        ends = [p + n for p, n in zip(batch.start_pos, lens, strict=True)]
        L = max(ends)  # noqa: N806
        self._validate(batch, lens, ends)
        # Index tensors are built on the host (tiny, and boolean-mask assignment would sync a GPU), then moved once.
        cpu = torch.device("cpu")
        slots = batch.slot_ids
        first = slots[0]
        contiguous = slots == list(range(first, first + B))
        slot_ids = torch.tensor(slots, dtype=torch.long)
        flat = torch.tensor(list(chain.from_iterable(batch.token_ids)), dtype=torch.long)
        starts = torch.tensor(batch.start_pos, dtype=torch.long)
        col = torch.arange(S)
        if min(lens) == S:  # no padding
            ids = flat.view(B, S)
            positions = starts[:, None] + col  # (B, S)
        else:
            lens_t = torch.tensor(lens, dtype=torch.long)
            valid = col[None, :] < lens_t[:, None]  # (B, S)
            ids = torch.zeros(B, S, dtype=torch.long)
            ids[valid] = flat  # row-major order of `valid` == row order of the flat tokens
            positions = torch.where(valid, starts[:, None] + col, self._scratch)  # (B, S); padding -> scratch

        # Logits: the last num_logits[i] real tokens of row i, as indices into the flattened (B*S) tokens.
        nl = batch.num_logits
        if B == 1 and nl[0] == S:
            logits_idx = None
        elif B == 1:
            logits_idx = torch.arange(lens[0] - nl[0], lens[0])
        else:
            nl_t = torch.tensor(nl, dtype=torch.long)
            row_end = torch.arange(B) * S + torch.tensor(lens, dtype=torch.long)  # (B,) one past each row's last
            n_total = batch.total_logits
            row = torch.repeat_interleave(torch.arange(B), nl_t, output_size=n_total)  # (N,)
            offset_from_end = torch.cumsum(nl_t, 0)[row] - torch.arange(n_total)  # (N,) nl_i..1 within row i
            logits_idx = row_end[row] - offset_from_end

        if self.device != cpu:
            ids, positions, slot_ids = (t.to(self.device, non_blocking=True) for t in (ids, positions, slot_ids))
            if logits_idx is not None:
                logits_idx = logits_idx.to(self.device, non_blocking=True)
        # Every query sees all of [0, L) only when each row is one token ending at L (decode at equal positions).
        needs_mask = S > 1 or any(e != L for e in ends)
        if native:  # the native attention reads each token's slot up to its own position: no mask
            needs_mask = False
        elif self.batch_invariant:  # whole key blocks, always masked (invariant_attention.py)
            L, needs_mask = pad_context(L, self.cache.max_len), True  # noqa: N806
        mask = StepInputs.causal_mask(positions, L) if needs_mask else None
        return StepInputs(input_ids=ids, positions=positions, slot_ids=slot_ids, ctx_len=L, attn_mask=mask,
                          logits_idx=logits_idx, slot_range=(first, B) if contiguous else None)

    def _validate(self, batch: ForwardBatch, lens: list[int], ends: list[int]) -> None:
        if min(lens) < 1:
            raise ValueError("every row needs at least one token")
        if max(ends) > self.max_model_len or min(batch.start_pos) < 0:
            raise ValueError(f"positions must lie in [0, {self.max_model_len}); a row ends at {max(ends)}")
        if len(set(batch.slot_ids)) != len(batch.slot_ids):
            raise ValueError(f"rows must name distinct slots, got {batch.slot_ids}")
        if min(batch.slot_ids) < 0 or max(batch.slot_ids) >= self.max_slots:
            raise ValueError(f"slot ids must lie in [0, {self.max_slots}), got {batch.slot_ids}")
        if any(n < 0 or n > ln for n, ln in zip(batch.num_logits, lens, strict=True)):
            raise ValueError("num_logits[i] must lie in [0, len(token_ids[i])]")
