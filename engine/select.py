"""Turn one step's target logits into the tokens each sequence emits.

Rows without draft tokens are plain sampling; rows with drafts go through the rejection sampler. Both see logits that
passed through the same pipeline (`process_logits`), row by row, with each verify row's history including the earlier
draft tokens — so speculation changes how fast tokens come, never which distribution they come from. Logprobs are
always the target's, computed on the raw logits of the row that produced each emitted token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.outputs import TokenLogprob
from engine.sampling.logprobs import compute_logprobs
from engine.sampling.pipeline import RowContext, process_logits
from engine.sampling.sampler import probs_from_processed, sample
from engine.sequence import Sequence
from engine.spec.rejection_sampler import rejection_sample
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
    any_drafts = any(drafts)
    if not any_drafts:
        tokens = sample(processed, ctxs, [s.generator for s in seqs]).tolist()
        emitted = [[t] for t in tokens]
    else:
        probs = probs_from_processed(processed)
        dp = None
        if draft_probs is not None and any(p is not None for p in draft_probs):
            dp = torch.cat([p for p in draft_probs if p is not None and p.shape[0] > 0], dim=0).to(probs.device)
        emitted = rejection_sample(
            drafts, dp, probs, greedy=[s.params.greedy for s in seqs], generators=[s.generator for s in seqs]
        )

    logprob_lists = _logprobs(logits, seqs, drafts, emitted)
    return [Selection(tok, len(tok) - 1, lp) for tok, lp in zip(emitted, logprob_lists, strict=True)]


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
