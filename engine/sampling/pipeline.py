"""The logits pipeline: raw model logits -> processed logits that the sampler (and the rejection sampler) draw from.

One function, `process_logits`, applied identically to target and draft logits, position by position. Doing the same
processing on both sides is what keeps speculative decoding lossless for every sampling parameter (see DESIGN.md).

Order (as vLLM / HF): repetition penalty, presence & frequency penalties, logit_bias, min_tokens masking of stop
tokens, the grammar's allowed tokens (structured output: before top-k/top-p, so those keep allowed tokens); then, for non-greedy rows only, temperature, top_k, top_p, min_p. Masked tokens get -inf.

Everything is batched over rows; per-row Python only builds small index lists, and a knob nobody in the batch uses
costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.sampling.params import SamplingParams
from engine.structured.masking import apply_allowed


@dataclass
class RowContext:
    """What the pipeline needs to know about one logits row.

    In a verify step a sequence with k draft tokens has k+1 rows; row j's `output_ids` include that sequence's draft
    tokens 0..j-1, as if already generated, so penalties and min_tokens see the same history as plain decoding would.
    """

    params: SamplingParams
    prompt_ids: Sequence[int]  # for repetition_penalty (HF/CTRL semantics: prompt + output tokens)
    output_ids: Sequence[int]  # tokens generated so far, as seen at this row
    # EOS + params.stop_token_ids; masked while len(output_ids) < params.min_tokens
    stop_token_ids: Sequence[int] = ()
    # `[V]` bool: tokens the request's grammar allows at this row (engine.structured), None = unconstrained
    allowed: torch.Tensor | None = None


def process_logits(logits: torch.Tensor, rows: Sequence[RowContext]) -> torch.Tensor:
    """Return processed float32 logits `[N, V]` for raw `logits` `[N, V]`, one `RowContext` per row.

    The input is never modified; the result is a new float32 tensor on the same device.
    """
    if logits.dim() != 2 or logits.shape[0] != len(rows):
        raise ValueError(
            f"logits must be [N, V] with N == len(rows) ({len(rows)}), got {tuple(logits.shape)}"
        )
    out = logits.to(torch.float32, copy=True)  # (N, V)
    if not rows:
        return out
    _apply_penalties(out, rows)
    _apply_logit_bias(out, rows)
    _apply_min_tokens(out, rows)
    _apply_grammar(out, rows)

    # Sampling knobs only shape the distribution of non-greedy rows; greedy rows keep their argmax as is.
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if not sampled:
        return out
    _apply_temperature(out, rows, sampled)
    _apply_top_k_top_p(out, rows, sampled)
    _apply_min_p(out, rows, sampled)
    return out


def _ids_to_counts(id_lists: list[Sequence[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """Dense token counts `[len(id_lists), V]` (float32) built with one scatter_add."""
    counts = torch.zeros(len(id_lists), vocab_size, dtype=torch.float32, device=device)
    lengths = [len(ids) for ids in id_lists]
    if sum(lengths) == 0:
        return counts
    flat = torch.tensor([t for ids in id_lists for t in ids], dtype=torch.long)  # (sum L,)
    row = torch.repeat_interleave(torch.arange(len(id_lists)), torch.tensor(lengths))  # (sum L,)
    index = (row * vocab_size + flat).to(device)
    counts.view(-1).scatter_add_(0, index, torch.ones(index.numel(), dtype=torch.float32, device=device))
    return counts


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    """Per-row scalars as a float32 column `[R, 1]` that broadcasts over the vocabulary."""
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def _prompt_seen(
    rows: Sequence[RowContext], idx: list[int], vocab: int, device: torch.device
) -> torch.Tensor:
    """`[P, V]` bool: token occurs in the row's prompt (rows without repetition_penalty: all False).

    Rows sharing one prompt object (a sequence's k+1 verify rows, the n choices of a request) are counted once.
    """
    unique: dict[int, int] = {}
    prompts: list[Sequence[int]] = [()]  # slot 0: no prompt
    which = []
    for i in idx:
        r = rows[i]
        if r.params.repetition_penalty == 1.0 or not r.prompt_ids:
            which.append(0)
            continue
        slot = unique.setdefault(id(r.prompt_ids), len(prompts))
        if slot == len(prompts):
            prompts.append(r.prompt_ids)
        which.append(slot)
    counts = _ids_to_counts(prompts, vocab, device)  # (U, V)
    return counts[torch.tensor(which, device=device)] > 0


def _apply_penalties(out: torch.Tensor, rows: Sequence[RowContext]) -> None:
    idx = [i for i, r in enumerate(rows) if r.params.has_penalties]
    if not idx:
        return
    vocab, device = out.shape[1], out.device
    params = [rows[i].params for i in idx]
    sub = out[idx]  # (P, V) copy of the penalized rows
    output_counts = _ids_to_counts([rows[i].output_ids for i in idx], vocab, device)  # (P, V)

    if any(p.repetition_penalty != 1.0 for p in params):
        # HF semantics: every token seen in prompt or output is divided (if positive) or multiplied (if negative).
        seen = (output_counts > 0) | _prompt_seen(rows, idx, vocab, device)
        rep = _column([p.repetition_penalty for p in params], device)
        sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)

    if any(p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in params):
        # OpenAI semantics, over generated tokens only.
        pres = _column([p.presence_penalty for p in params], device)
        freq = _column([p.frequency_penalty for p in params], device)
        sub = sub - freq * output_counts - pres * (output_counts > 0).to(torch.float32)

    out[idx] = sub


def _apply_logit_bias(out: torch.Tensor, rows: Sequence[RowContext]) -> None:
    r_idx: list[int] = []
    t_idx: list[int] = []
    vals: list[float] = []
    for i, r in enumerate(rows):
        for tok, bias in r.params.logit_bias.items():
            r_idx.append(i)
            t_idx.append(int(tok))
            vals.append(float(bias))
    if not r_idx:
        return
    device = out.device
    out.index_put_(
        (torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)),
        torch.tensor(vals, dtype=torch.float32, device=device),
        accumulate=True,
    )


def _apply_min_tokens(out: torch.Tensor, rows: Sequence[RowContext]) -> None:
    r_idx: list[int] = []
    t_idx: list[int] = []
    for i, r in enumerate(rows):
        if r.stop_token_ids and len(r.output_ids) < r.params.min_tokens:
            r_idx.extend([i] * len(r.stop_token_ids))
            t_idx.extend(int(t) for t in r.stop_token_ids)
    if not r_idx:
        return
    device = out.device
    out.index_put_(
        (torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)),
        torch.tensor(-math.inf, dtype=torch.float32, device=device),
    )


def _apply_grammar(out: torch.Tensor, rows: Sequence[RowContext]) -> None:
    idx = [i for i, r in enumerate(rows) if r.allowed is not None]
    if idx:
        apply_allowed(out, idx, torch.stack([rows[i].allowed for i in idx]))  # (R, V) bool


def _apply_temperature(out: torch.Tensor, rows: Sequence[RowContext], sampled: list[int]) -> None:
    idx = [i for i in sampled if rows[i].params.temperature != 1.0]
    if not idx:
        return
    out[idx] = out[idx] / _column([rows[i].params.temperature for i in idx], out.device)


def _apply_top_k_top_p(out: torch.Tensor, rows: Sequence[RowContext], sampled: list[int]) -> None:
    vocab = out.shape[1]
    idx = [i for i in sampled if 0 < rows[i].params.top_k < vocab or rows[i].params.top_p < 1.0]
    if not idx:
        return
    device = out.device
    sub = out[idx]  # (R, V)
    ks = [rows[i].params.top_k if 0 < rows[i].params.top_k < vocab else vocab for i in idx]
    ps = [rows[i].params.top_p for i in idx]

    if all(p == 1.0 for p in ps):
        # top-k only: one topk with the largest k asked is much cheaper than a full sort of a large vocabulary.
        top_vals = sub.topk(max(ks), dim=-1).values  # (R, max k), descending
        threshold = top_vals.gather(1, torch.tensor(ks, device=device)[:, None] - 1)  # (R, 1) k-th largest
        out[idx] = sub.masked_fill(sub < threshold, -math.inf)  # ties with the k-th largest stay
        return

    logits_sort, order = sub.sort(dim=-1)  # ascending, as vLLM: the kept tokens are a suffix
    if any(k < vocab for k in ks):
        # Keep the k largest (and any ties with the k-th): threshold is the k-th largest value.
        pos = torch.tensor([vocab - k for k in ks], dtype=torch.long, device=device)[:, None]
        threshold = logits_sort.gather(1, pos)  # (R, 1)
        logits_sort = logits_sort.masked_fill(logits_sort < threshold, -math.inf)

    if any(p < 1.0 for p in ps):
        # Keep the smallest suffix (most likely tokens) whose mass reaches top_p; the most likely token always stays.
        probs_sort = logits_sort.softmax(dim=-1)
        cum = probs_sort.cumsum(dim=-1)  # ascending order: mass of this token and all less likely ones
        drop_mass = _column([1.0 - p for p in ps], device)
        uses = torch.tensor([p < 1.0 for p in ps], dtype=torch.bool, device=device)[:, None]
        mask = (cum <= drop_mass) & uses
        mask[:, -1] = False
        logits_sort = logits_sort.masked_fill(mask, -math.inf)

    out[idx] = torch.empty_like(sub).scatter_(1, order, logits_sort)


def _apply_min_p(out: torch.Tensor, rows: Sequence[RowContext], sampled: list[int]) -> None:
    idx = [i for i in sampled if rows[i].params.min_p > 0.0]
    if not idx:
        return
    sub = out[idx]  # (R, V)
    # prob < min_p * max_prob  <=>  logit < max_logit + log(min_p)  (no softmax needed)
    log_min_p = _column([math.log(rows[i].params.min_p) for i in idx], out.device)
    threshold = sub.max(dim=-1, keepdim=True).values + log_min_p
    out[idx] = sub.masked_fill(sub < threshold, -math.inf)
