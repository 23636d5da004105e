"""Logprobs of generated tokens under the raw target model distribution.

As vLLM's default, logprobs are those of the unprocessed model (log_softmax of the raw logits): penalties, bias,
temperature and truncation change which token is drawn, not the reported logprob. Batched: one log_softmax over the
rows that asked, one topk with the largest k asked, one transfer to the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.outputs import TokenLogprob, TopLogprob


def compute_logprobs(
    raw_logits: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int | None]
) -> list[TokenLogprob | None]:
    """For each row i of raw logits `[N, V]`: the logprob of `token_ids[i]` plus the `num_top[i]` most likely
    alternatives (sorted, most likely first), or None where `num_top[i]` is None.
    """
    n = raw_logits.shape[0]
    if token_ids.shape[0] != n or len(num_top) != n:
        raise ValueError("compute_logprobs needs one token id and one num_top entry per logits row")
    idx = [i for i, k in enumerate(num_top) if k is not None]
    result: list[TokenLogprob | None] = [None] * n
    if not idx:
        return result

    rows = torch.tensor(idx, dtype=torch.long, device=raw_logits.device)
    logprobs = torch.log_softmax(raw_logits[rows].to(torch.float32), dim=-1)  # (R, V)
    chosen_ids = token_ids.to(raw_logits.device)[rows]  # (R,)
    chosen = logprobs.gather(1, chosen_ids[:, None]).squeeze(1)  # (R,)
    max_k = min(max(num_top[i] for i in idx), logprobs.shape[1])
    if max_k > 0:
        top_vals, top_ids = logprobs.topk(max_k, dim=-1)  # (R, max_k), sorted descending
        top_vals_l, top_ids_l = top_vals.tolist(), top_ids.tolist()
    chosen_ids_l, chosen_l = chosen_ids.tolist(), chosen.tolist()

    for j, i in enumerate(idx):
        k = min(num_top[i], max_k)
        top = (
            [TopLogprob(token_id=top_ids_l[j][m], logprob=top_vals_l[j][m]) for m in range(k)]
            if k > 0
            else []
        )
        result[i] = TokenLogprob(token_id=chosen_ids_l[j], logprob=chosen_l[j], top=top)
    return result
