"""A draft's reduced-vocabulary head (FR-Spec, Zhao et al. 2025): score only the tokens the draft can usefully propose.

A draft model that predicts all of a large vocabulary pays for its LM head on every draft token: SmolLM2's tied
49,152 x 576 head is 21 % of the *target's* weights, so even a 2-layer draft costs c ~ 0.2 of a target step. A draft
checkpoint may carry `draft_vocab.safetensors` with one int tensor `token_ids` (N,): the target-vocabulary ids its
head scores, the N most frequent tokens of the target's own answers (tools/train_smollm_draft.py). The head becomes
an N-row linear (the rows of the full head at those ids); its logits are widened back to the full vocabulary with
`FILL` elsewhere, so every consumer (the logits pipeline, grammar masks, the rejection sampler) still sees (rows, V).

Still lossless: the draft distribution q is 0 outside the subset (exp(FILL) underflows in fp32), the draft never
proposes those tokens, and the rejection sampler's residual max(0, p - q) gives them their full target probability.
A finite FILL instead of -inf keeps q a distribution when a grammar masks every subset token (it becomes uniform
over the allowed others) instead of NaN.

The checkpoint itself stays a standard one (its config, its full tied embedding): a runner that ignores the file
scores the full vocabulary, equally lossless, with less acceptance (training only ever normalised over the subset).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("specserve.engine")

DRAFT_VOCAB_FILE = "draft_vocab.safetensors"
FILL = -1.0e4  # logit of a token outside the subset: softmax weight exp(-1e4 - max) == 0.0 in fp32


def load_draft_vocab(path: str | os.PathLike, vocab_size: int) -> torch.Tensor | None:
    """The checkpoint's head subset (N,) int64 in ascending order, or None when `path` has no `DRAFT_VOCAB_FILE`.
    Raises ValueError for a file that cannot be a subset of a `vocab_size` vocabulary."""
    f = Path(path) / DRAFT_VOCAB_FILE
    if not f.is_file():
        return None
    from safetensors.torch import load_file

    tensors = load_file(str(f))
    if "token_ids" not in tensors:
        raise ValueError(f"{f}: no 'token_ids' tensor (has {sorted(tensors)})")
    ids = tensors["token_ids"]
    if ids.dim() != 1 or ids.is_floating_point() or ids.numel() == 0:
        raise ValueError(f"{f}: token_ids must be a non-empty 1-D integer tensor, got {tuple(ids.shape)} {ids.dtype}")
    ids = ids.long().sort().values
    if int(ids[0]) < 0 or int(ids[-1]) >= vocab_size or bool((ids[1:] == ids[:-1]).any()):
        raise ValueError(f"{f}: token_ids must be distinct ids in [0, {vocab_size})")
    return ids


def save_draft_vocab(path: str | os.PathLike, token_ids: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file({"token_ids": token_ids.to(torch.int32).sort().values.contiguous()},
              str(Path(path) / DRAFT_VOCAB_FILE), metadata={"format": "pt"})


def restrict_head(model: nn.Module, token_ids: torch.Tensor) -> None:
    """Replace `model.lm_head` (V, hidden) with its rows at `token_ids` (N, hidden), untied from the embedding (which
    keeps every row for lookups); `model.head_token_ids` records the map. Before packing or compiling the model."""
    head: nn.Linear = model.lm_head
    small = nn.Linear(head.in_features, token_ids.numel(), bias=False, device=head.weight.device,
                      dtype=head.weight.dtype)
    with torch.no_grad():
        small.weight.copy_(head.weight.index_select(0, token_ids.to(head.weight.device)))
    small.requires_grad_(head.weight.requires_grad)
    model.lm_head = small
    model.head_token_ids = token_ids.to(head.weight.device)


def widen_logits(logits: torch.Tensor, token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(R, N) subset logits -> (R, vocab_size) float32, `FILL` outside the subset."""
    full = torch.full((logits.shape[0], vocab_size), FILL, dtype=torch.float32, device=logits.device)
    return full.index_copy_(1, token_ids, logits.float())
