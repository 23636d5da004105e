"""What both Neuron runners share: options, bucket defaults, the compiled-graph cache, and `SlotKVRunner`, the host
mirror of every slot's KV contents that turns a `ForwardBatch` into the static-shape calls Neuron graphs accept.

Neuron graphs are compiled for fixed shapes, and the two libraries' continuous-batching contracts (transformers-neuronx
`LlamaForSampling` with `ContinuousBatchingConfig`; NxD Inference `NeuronLlamaForCausalLM` with `is_continuous_batching`)
share four hazards that shape this file:

1. Every decode/verify call runs the whole compiled batch. A slot that holds a running sequence must be listed in
   every call, or the library writes padding into it: transformers-neuronx fills unlisted rows with token 0 at cache
   position 0 (base.py 576-585 at 1ade6d7) and its fused decoder does the same (`preprocess_input`,
   fused_speculation.py 871-895); NxD Inference repeats the first row's inputs into the unlisted seq_ids
   (`_forward_with_pad`, model_wrapper.py 569-660 at cd3abf3). A live slot with no work this call re-writes the tail
   of what it already holds (same tokens, same positions, same earlier cache: the same K/V).
2. A free slot (nothing in its cache that will ever be read) must never change the branch a call takes. Both
   libraries route a call to context encoding from its positions: transformers-neuronx when the FIRST cache id is 0 and
   a row has several tokens (base.py 506, 363), its fused decoder when ANY row has cache id 0
   (fused_speculation.py 767-769), NxD Inference >= 0.2 when `position_ids.min() == 0` whatever the length
   (model_base.py 3591-3592). So a free row is either left out where the library's own padding is harmless (it then
   gets what the library writes: tnx decode and fused token 0 at position 0, NxDI the first row's inputs, all in the
   same branch), or, where the graph needs every row (tnx `speculative_forward`, base.py 559-561), given filler at
   positions 1..m: never 0, past anything it holds.
3. Multi-token graphs are compiled per token count (tnx `enable_speculative_decoder(k)` keys graphs by (k, batch),
   base.py 122-132; NxDI compiles one `speculation_length` and then NO token-generation graph, model_base.py
   3105-3110). -> Multi-token calls use a "window" of a compiled length m for every listed slot, never starting at
   position 0. A row with n < m new tokens is left-padded with tokens the slot already holds (re-written identically)
   or right-padded with filler at positions past its end, which are never read before a real token overwrites them
   (the same argument that makes rejected drafts harmless). A row longer than the largest window is split. Without a
   token-generation graph a one-token row runs through the smallest window the same way.
4. Context encoding starts at position 0 with batch size 1 and at most the largest context bucket of tokens, and writes
   K/V for positions 0..bucket-1 (tnx `_pad_cache_ids`, base.py 464-466; NxDI fills the cache prefix of the padded
   bucket): harmless, for the same reason as filler.
   -> Prompt chunks from the engine's chunked prefill are buffered per slot and encoded in one call when the last chunk
   arrives. Target prompts longer than the largest bucket are refused at admission (`check_request`); a longer
   position-0 row (a draft model catching up on prompt + output) encodes one bucket and windows the rest.

For (1) the runner's own mirror (what it wrote to each slot since the slot was last released) is the truth: a batch
lists only the rows with work (the draft proposer only the sequences it drafts for).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import PromptTooLongError
from engine.runners.base import ForwardBatch, Runner, RunnerInfo
from engine.runners.options import NeuronOptions

log = logging.getLogger("specserve.engine")

NEURON_DEVICE = "/dev/neuron0"  # the Neuron driver's first device; a container sees it only with --device=/dev/neuron0
COMPLETE_MARKER = "specserve-complete.json"  # written after a compiled-graph directory is fully saved


def neuron_device_missing() -> str | None:
    """None when a Neuron device is visible, else what is missing."""
    if os.path.exists(NEURON_DEVICE):
        return None
    return (f"no Neuron device ({NEURON_DEVICE} not found; run on a trn1/inf2 instance with the Neuron driver, and pass "
            f"--device={NEURON_DEVICE} to docker run)")


def library_missing(module: str, pip_name: str, where: str) -> str | None:
    """None when `module` imports, else a message naming the package and where it ships."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"{pip_name} is not installed ({type(e).__name__}: {e}); it ships in {where}"
    return None


def default_context_buckets(max_model_len: int) -> tuple[int, ...]:
    """Powers of two from 128 up to, and ending at, max_model_len - 1 (a prompt must leave room for one token)."""
    top = max(2, max_model_len - 1)
    out, b = [], 128
    while b < top:
        out.append(b)
        b *= 2
    out.append(top)
    return tuple(out)


def resolve_buckets(opts: NeuronOptions, max_model_len: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(context buckets, token buckets), validated against max_model_len."""
    ctx = opts.context_buckets or default_context_buckets(max_model_len)
    tok = opts.token_buckets or (max_model_len,)
    if max(ctx) >= max_model_len:
        raise ValueError(f"neuron_context_buckets {list(ctx)} must stay below max_model_len ({max_model_len})")
    if max(tok) != max_model_len:
        raise ValueError(f"the largest neuron_token_buckets entry ({max(tok)}) must equal max_model_len "
                         f"({max_model_len}): it is the KV length every slot is compiled with")
    return tuple(sorted(ctx)), tuple(sorted(tok))


def amp_for(dtype: str) -> str:
    """RunnerSpec dtype -> the Neuron `amp` string; auto = bf16 (Neuron's native matmul type)."""
    return {"auto": "bf16", "bfloat16": "bf16", "float16": "f16", "float32": "f32"}.get(dtype, "bf16")


# -- compiled-graph cache --------------------------------------------------------------------------------------------


def cache_dir_for(root: str | None, kind: str, model_path: str, key: dict) -> Path | None:
    """A sub-directory of `root` keyed by everything that shapes the graphs (model config, batch, buckets, K, tp)."""
    if root is None:
        return None
    cfg_file = Path(model_path) / "config.json"
    payload = {"config": cfg_file.read_text() if cfg_file.is_file() else model_path, **key}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(root) / f"{kind}-{key.get('role', 'target')}-{digest}"


def is_cache_hit(path: Path | None) -> bool:
    return path is not None and (path / COMPLETE_MARKER).is_file()


def mark_complete(path: Path, key: dict, seconds: float) -> None:
    (path / COMPLETE_MARKER).write_text(json.dumps({"key": key, "compile_seconds": round(seconds, 1)}, default=str))


def log_compile(kind: str, role: str, path: Path | None, hit: bool, seconds: float) -> None:
    if hit:
        log.info("%s %s: loaded compiled graphs from %s in %.1fs (cache hit)", kind, role, path, seconds)
    elif path is not None:
        log.info("%s %s: compiled in %.1fs (cache miss; saved to %s)", kind, role, seconds, path)
    else:
        log.info("%s %s: compiled in %.1fs (no --neuron-compiled-dir: not saved)", kind, role, seconds)


# -- the slot mirror and call planner --------------------------------------------------------------------------------


@dataclass
class _WindowRow:
    slot: int
    tokens: list[int]  # tokens still to run
    start: int  # position of tokens[0]
    first_logit: int  # index (within the row's original tokens) of the first token that needs logits
    out_offset: int  # where that token's logits go in the output
    done: int = 0  # tokens of the row already run


@dataclass
class SlotKVRunner(Runner, abc.ABC):
    """Runner protocol over three backend calls a subclass provides (all slot tensors are `(max_slots,)`, slot i in
    row i; `live` (B,) bool is False for free rows, whose ids are filler at positions 1..m):

      _context(slot, tokens) -> (V,) float32 logits of the last token; tokens at positions 0..n-1, 2 <= n <= max bucket
      _decode(ids (B, 1), pos (B, 1), slots (B,), live (B,)) -> (B, V); only when `decode_graph`
      _window(ids (B, m), pos (B, m), slots (B,), live (B,)) -> (B, m, V); m in `window_lengths`, every position >= 1
    """

    vocab_size: int
    max_slots: int
    max_model_len: int
    context_buckets: tuple[int, ...]
    window_lengths: tuple[int, ...]  # token counts with a compiled graph; always includes 1 (decode)
    allowed_k: tuple[int, ...]
    backend: str
    dtype: str
    decode_graph: bool = True  # a one-token (token-generation) graph exists; NxDI with speculation_length > 0 has none
    min_context: int = 1  # fewest tokens a position-0 call may carry (NxDI: 2, its 1-token context logits are a pad's)
    history: list[list[int]] = field(init=False)  # tokens the device cache holds for each slot, positions 0..h-1
    pending: list[list[int]] = field(init=False)  # prompt chunks buffered until the last one arrives
    calls: dict[str, int] = field(init=False)  # backend calls by kind (for tests and logs)

    def __post_init__(self) -> None:
        self.window_lengths = tuple(sorted(set(self.window_lengths) | ({1} if self.decode_graph else set())))
        if not self.window_lengths:
            raise ValueError("no graph for non-context calls: compile a token-generation or a speculation graph")
        if self.window_lengths[-1] + 1 >= self.max_model_len:
            raise ValueError(f"window length {self.window_lengths[-1]} does not fit max_model_len {self.max_model_len}")
        self.history = [[] for _ in range(self.max_slots)]
        self.pending = [[] for _ in range(self.max_slots)]
        self.calls = {"context": 0, "decode": 0, "window": 0}

    @property
    def max_context(self) -> int:
        return self.context_buckets[-1]

    # -- protocol --------------------------------------------------------------------------------------------------

    def info(self) -> RunnerInfo:
        return RunnerInfo(vocab_size=self.vocab_size, max_slots=self.max_slots, max_model_len=self.max_model_len,
                          allowed_k=self.allowed_k, max_chunk_tokens=self.max_context, device="neuron",
                          dtype=self.dtype, backend=self.backend, buckets=self.context_buckets)

    def check_request(self, prompt_ids, params) -> None:
        """Admission check for the engine to call before enqueueing (raises InvalidRequestError / PromptTooLongError):
        the prompt must fit one context-encoding graph, and the sampling parameters this runner's limits."""
        self.check_params(params)
        n = len(prompt_ids)
        if n > self.max_context:
            raise PromptTooLongError(
                f"the prompt has {n} tokens but the largest compiled context bucket is {self.max_context} tokens; "
                "shorten the prompt or restart the server with a larger --neuron-context-buckets entry",
                field="prompt")

    def check_params(self, params) -> None:  # noqa: B027  (a default hook, not abstract)
        """Sampling limits of this runner (none unless a subclass runs sampling on device)."""

    def release_slot(self, slot: int) -> None:
        self.history[slot] = []
        self.pending[slot] = []

    def warmup(self) -> None:
        """One context encoding, one decode and one call per window length on slot 0; the mirror is reset after."""
        n = min(16, self.max_context)
        self.execute(ForwardBatch([0], [[0] * n], [0], [1]))
        for m in self.window_lengths:
            if n + m > self.max_model_len:
                break
            self.execute(ForwardBatch([0], [[0] * m], [n], [m]))
            n += m
        self.release_slot(0)

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        self._validate(batch)
        out = torch.empty(batch.total_logits, self.vocab_size, dtype=torch.float32)
        offsets = [0]
        for nl in batch.num_logits:
            offsets.append(offsets[-1] + nl)
        first_pos: list[_WindowRow] = []  # one-token rows at position 0: decode calls of their own
        rows: list[_WindowRow] = []
        for i, (slot, toks, start, nl) in enumerate(
                zip(batch.slot_ids, batch.token_ids, batch.start_pos, batch.num_logits, strict=True)):
            if start == 0 or self.pending[slot]:
                row = self._prefill(slot, toks, start, nl, offsets[i], out)
                if row is not None:
                    (first_pos if row.start == 0 else rows).append(row)
                continue
            if start > len(self.history[slot]):
                raise ValueError(f"slot {slot}: row starts at position {start} but the slot holds only "
                                 f"{len(self.history[slot])} positions")
            rows.append(_WindowRow(slot, list(toks), start, len(toks) - nl, offsets[i]))
        for row in first_pos:
            self._run_windows([row], out)
        if rows:
            self._run_windows(rows, out)
        return out

    # -- planning --------------------------------------------------------------------------------------------------

    def _prefill(self, slot: int, toks: list[int], start: int, nl: int, offset: int,
                 out: torch.Tensor) -> _WindowRow | None:
        """Buffer a prompt chunk; on the last chunk run context encoding. Returns a leftover row to window, if any."""
        if start == 0:
            self.pending[slot], self.history[slot] = [], []
        elif start != len(self.pending[slot]):
            raise ValueError(f"slot {slot}: prompt chunk starts at {start}, expected {len(self.pending[slot])}")
        self.pending[slot].extend(toks)
        if nl == 0:
            return None
        prompt, self.pending[slot] = self.pending[slot], []
        n = len(prompt)
        first_logit = n - nl
        n_ctx = min(first_logit + 1, self.max_context)
        if n_ctx < self.min_context:
            raise ValueError(f"{self.backend}: a position-0 call needs at least {self.min_context} tokens (logits of "
                             "prompt position 0 are not available here)")
        if n_ctx == 1:  # one token at position 0: tnx routes a single token to the token-generation graph
            return _WindowRow(slot, prompt, 0, first_logit, offset)
        logits = self._context(slot, prompt[:n_ctx])
        self.calls["context"] += 1
        self.history[slot] = prompt[:n_ctx]
        if n_ctx - 1 == first_logit:
            out[offset] = logits
            offset += 1
        rest = prompt[n_ctx:]
        if not rest:
            return None
        return _WindowRow(slot, rest, n_ctx, max(0, first_logit - n_ctx), offset)

    def _run_windows(self, rows: list[_WindowRow], out: torch.Tensor) -> None:
        by_slot = {r.slot: r for r in rows}
        while by_slot:
            need = max(len(r.tokens) for r in by_slot.values())
            m = next((w for w in self.window_lengths if w >= need), self.window_lengths[-1])
            if any(r.start == 0 for r in by_slot.values()):
                m = 1  # one token at position 0 (tnx only, min_context == 1): the token-generation graph
            B = self.max_slots  # noqa: N806
            ids = torch.zeros(B, m, dtype=torch.long)
            pos = torch.zeros(B, m, dtype=torch.long)
            live = torch.zeros(B, dtype=torch.bool)
            cols: dict[int, int] = {}  # slot -> window column of the row's first new token
            for slot in range(B):
                hist = self.history[slot]
                row = by_slot.get(slot)
                if row is not None:
                    take = row.tokens[:m]
                    del hist[row.start:]
                    hist.extend(take)
                end = len(hist)
                live[slot] = end > 0
                # The last m positions it holds (re-written identically), or 1..m: filler past its end, never 0
                # (point 2 above); a row starting at 0 is the one-token prompt of the line above.
                w = 0 if row is not None and row.start == 0 else end - m if end - m >= 1 else 1
                window = hist[w:end]
                ids[slot, :len(window)] = torch.tensor(window, dtype=torch.long) if window else 0
                pos[slot] = torch.arange(w, w + m)
                if row is not None:
                    cols[slot] = row.start - w
            slots = torch.arange(B, dtype=torch.long)
            if m == 1 and self.decode_graph:
                logits = self._decode(ids, pos, slots, live).unsqueeze(1)  # (B, 1, V)
                self.calls["decode"] += 1
            else:
                logits = self._window(ids, pos, slots, live)  # (B, m, V)
                self.calls["window"] += 1
            for slot, col in cols.items():
                row = by_slot[slot]
                n = min(m, len(row.tokens))
                for j in range(n):
                    g = row.done + j
                    if g >= row.first_logit:
                        out[row.out_offset + g - row.first_logit] = logits[slot, col + j]
                row.tokens = row.tokens[n:]
                row.start += n
                row.done += n
                if not row.tokens:
                    del by_slot[slot]

    def _validate(self, batch: ForwardBatch) -> None:
        if len(set(batch.slot_ids)) != len(batch.slot_ids):
            raise ValueError(f"rows must name distinct slots, got {batch.slot_ids}")
        for slot, toks, start, nl in zip(batch.slot_ids, batch.token_ids, batch.start_pos, batch.num_logits, strict=True):
            if not 0 <= slot < self.max_slots:
                raise ValueError(f"slot {slot} outside [0, {self.max_slots})")
            if not toks or start < 0 or start + len(toks) > self.max_model_len:
                raise ValueError(f"slot {slot}: positions {start}..{start + len(toks) - 1} outside "
                                 f"[0, {self.max_model_len})")
            if not 0 <= nl <= len(toks):
                raise ValueError(f"slot {slot}: num_logits {nl} outside [0, {len(toks)}]")

    # -- backend calls ---------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _context(self, slot: int, tokens: list[int]) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def _decode(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def _window(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        ...


def timed(fn):
    """Run fn(); return (result, seconds)."""
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0
