"""All the masks of one verify step in one native call: llguidance's executor walks every matcher over its drafts in
parallel threads (GIL released) and writes each row's bitmask; one unpack turns the batch into boolean rows.

`prefetch_masks` fills each `GrammarState`'s per-step mask cache, so `GrammarState.masks_for` (called row by row by
`engine.select.row_contexts`) finds them there. Rows the draft proposer already asked for are not recomputed.
"""

from __future__ import annotations

import torch

from engine.structured.masking import unpack_bitmask


def prefetch_masks(grammars: list, drafts: list[list[int]]) -> None:
    """`grammars[i]` (a GrammarState or None) will be asked for the k_i + 1 masks of `drafts[i]`; compute the missing
    ones together. Drafts must be valid continuations (StructuredProposer cuts them at the first invalid token)."""
    todo = [(g, d) for g, d in zip(grammars, drafts, strict=True)
            if g is not None and not g.has_masks_for(d)]
    if len(todo) < 2:  # one sequence: the row-by-row path costs the same
        return
    import llguidance.torch as lgt

    vocab = todo[0][0].vocab_size
    n_rows = sum(len(d) + 1 for _, d in todo)
    packed = lgt.allocate_token_bitmask(n_rows, vocab)  # (R, W) int32, all bits set
    packed.zero_()  # a row the executor does not reach (after an invalid or terminal draft) stays empty -> None
    jobs, start = [], 0
    for g, d in todo:
        jobs.append((g.committed_matcher(), start, list(d)))
        start += len(d) + 1
    lgt.fill_next_token_bitmask_par_with_draft_tokens(todo[0][0].executor, jobs, packed)
    allowed = unpack_bitmask(packed, vocab)  # (R, V) bool
    any_allowed = allowed.any(dim=-1).tolist()
    start = 0
    for g, d in todo:
        rows: list[torch.Tensor | None] = [allowed[start + j] if any_allowed[start + j] else None
                                           for j in range(len(d) + 1)]
        g.store_masks(d, rows)
        start += len(d) + 1
