"""Turn one step's target logits into the tokens each sequence emits.

Seeded sampled sequences (`Sequence.coupled`) take every token, with or without drafts, as the Gumbel-max sample
keyed by (seed, choice, output position) (`engine.spec_decode.coupled.coupled_verify`): the same text at any K. For the rest,
rows without draft tokens are plain sampling and rows with drafts go through the rejection sampler. All see logits
that passed through the same pipeline (`process_logits`), row by row, with each verify row's history including the
earlier draft tokens — so speculation changes how fast tokens come, never which distribution they come from.
Logprobs are always the target's, computed on the raw logits of the row that produced each emitted token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.outputs import TokenLogprob
from engine.sampling.logprobs import compute_logprobs
from engine.sampling.pipeline import RowContext, process_logits
from engine.sampling.sampler import probs_from_processed, sample
from engine.sequence import Sequence
from engine.spec_decode.coupled import coupled_verify, gumbel_noise
from engine.spec_decode.rejection_sampler import rejection_sample
from engine.structured.batch import prefetch_masks


@dataclass
class Selection:
    token_ids: list[int]  # accepted draft prefix + one sampled (recovered or bonus) token
    num_accepted: int  # draft tokens accepted
    logprobs: list[TokenLogprob] | None  # one per emitted token, if the request asked


def row_contexts(seq: Sequence, drafts: list[int]) -> list[RowContext]:
    """The k+1 pipeline rows of a sequence verifying k drafts: row j has drafts[:j] appended to its history.

    Under a grammar, row j also carries the tokens allowed in the state drafts[:j] reach (structured output).
    """
    out = seq.output_ids
    allowed = seq.grammar.masks_for(drafts) if seq.grammar is not None else [None] * (len(drafts) + 1)
    return [RowContext(seq.params, seq.prompt_ids, out + drafts[:j] if j else out, seq.stop_token_ids, allowed[j])
            for j in range(len(drafts) + 1)]


def select_tokens(
    logits: torch.Tensor,
    seqs: list[Sequence],
    drafts: list[list[int]],
    draft_probs: list[torch.Tensor | None] | None = None,
) -> list[Selection]:
    """`logits` `[sum(len(d) + 1), V]`: for sequence i, len(drafts[i]) + 1 consecutive rows.

    `draft_probs[i]`: `[len(drafts[i]), V]` processed draft distribution, or None for one-hot drafts (n-gram).
    """
    prefetch_masks([s.grammar for s in seqs], drafts)  # structured output: every row's mask in one native call
    ctxs = [c for seq, d in zip(seqs, drafts, strict=True) for c in row_contexts(seq, d)]
    processed = process_logits(logits, ctxs)  # (N, V)
    starts = [0]
    for d in drafts:
        starts.append(starts[-1] + len(d) + 1)
    emitted: list[list[int]] = [[] for _ in seqs]
    groups = ([i for i, s in enumerate(seqs) if s.coupled], [i for i, s in enumerate(seqs) if not s.coupled])
    for group, select in zip(groups, (_coupled, _rejection), strict=True):
        if not group:
            continue
        # The group's rows, in order (all rows when the batch is one group: no copy).
        rows = [r for i in group for r in range(starts[i], starts[i + 1])]
        part = processed if len(rows) == processed.shape[0] else processed[torch.tensor(rows, device=logits.device)]
        sub = [seqs[i] for i in group]
        for i, tokens in zip(group, select(part, [ctxs[r] for r in rows], sub, [drafts[i] for i in group],
                                            [draft_probs[i] if draft_probs else None for i in group]), strict=True):
            emitted[i] = tokens

    logprob_lists = _logprobs(logits, seqs, drafts, emitted)
    return [Selection(tok, len(tok) - 1, lp) for tok, lp in zip(emitted, logprob_lists, strict=True)]


def _coupled(processed, ctxs, seqs, drafts, draft_probs) -> list[list[int]]:
    """Seeded sampled sequences: row j of sequence i is output position len(output_ids) + j of its choice, and takes
    that position's keyed Gumbel noise (the draft proposer drew its drafts with the same)."""
    noise = torch.cat([gumbel_noise(s.params.seed, s.index, range(len(s.output_ids), len(s.output_ids) + len(d) + 1),
                                    processed.shape[1]) for s, d in zip(seqs, drafts, strict=True)])  # (N, V) CPU
    return coupled_verify(drafts, probs_from_processed(processed), noise)


def _rejection(processed, ctxs, seqs, drafts, draft_probs) -> list[list[int]]:
    """Everything else: plain sampling, or rejection sampling of the drafts (greedy rows by argmax)."""
    if not any(drafts):
        return [[t] for t in sample(processed, ctxs).tolist()]
    probs = probs_from_processed(processed)
    dp = None
    if any(p is not None for p in draft_probs):
        # The hybrid proposer mixes rows drafted by lookup (one-hot, no probs) with draft-model rows in one batch:
        # the sampler takes one `[sum k_i, V]` tensor, so a one-hot row's distribution is its draft tokens' one-hot
        # rows (q = delta at the draft, which verifies exactly as the one-hot path does).
        parts = [p if p is not None else _one_hot(d, probs.shape[1])
                 for d, p in zip(drafts, draft_probs, strict=True) if d]
        dp = torch.cat([p.to(device=probs.device, dtype=torch.float32) for p in parts], dim=0)
    return rejection_sample(drafts, dp, probs, greedy=[s.params.greedy for s in seqs])


def _one_hot(draft: list[int], vocab: int) -> torch.Tensor:
    """`[len(draft), vocab]` float32: row j puts all mass on draft[j]."""
    return torch.nn.functional.one_hot(torch.tensor(draft, dtype=torch.long), vocab).to(torch.float32)


def _logprobs(logits, seqs, drafts, emitted) -> list[list[TokenLogprob] | None]:
    """Emitted token j of sequence i came from row j of its block."""
    if all(s.params.logprobs is None for s in seqs):
        return [None] * len(seqs)
    rows, toks, tops, owner = [], [], [], []
    base = 0
    for i, (seq, d, tok) in enumerate(zip(seqs, drafts, emitted, strict=True)):
        if seq.params.logprobs is not None:
            for j, t in enumerate(tok):
                rows.append(base + j)
                toks.append(t)
                tops.append(seq.params.logprobs)
                owner.append(i)
        base += len(d) + 1
    index = torch.tensor(rows, dtype=torch.long, device=logits.device)
    lps = compute_logprobs(logits[index], torch.tensor(toks, dtype=torch.long), tops)
    out: list[list[TokenLogprob] | None] = [None if s.params.logprobs is None else [] for s in seqs]
    for i, lp in zip(owner, lps, strict=True):
        out[i].append(lp)
    return out
