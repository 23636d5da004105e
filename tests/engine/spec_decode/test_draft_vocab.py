"""A draft with a reduced-vocabulary head (engine/models/draft_vocab.py, FR-Spec): the runner scores only the subset
and widens to the full vocabulary; speculation stays lossless (greedy tokens and the sampled distribution are the
target's) although the draft can never propose most tokens; only drafts read the file; bad files are refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.stats import chi2_contingency

from engine.models.draft_vocab import DRAFT_VOCAB_FILE, FILL, load_draft_vocab, save_draft_vocab
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner
from engine.sampling.params import SamplingParams
from tests.engine.spec_decode.test_spec_e2e import first_tokens, prompt_containing_its_likely_continuations
from tests.helpers.engines import final, greedy, make_engine, run_all, tokens_of


@pytest.fixture(scope="module")
def reduced(tiny_pair, tmp_path_factory):
    """(draft dir with a head over the even token ids plus EOS, those ids (N,))."""
    _, draft = tiny_pair
    out = tmp_path_factory.mktemp("reduced") / "draft"
    shutil.copytree(draft, out)
    vocab = TorchRunner.from_pretrained(draft, max_slots=1, max_model_len=64, dtype="float32").info().vocab_size
    ids = torch.tensor(sorted(set(range(0, vocab, 2)) | {1}))  # 1 = the tiny tokenizer's EOS
    save_draft_vocab(out, ids)
    return out, ids


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_runner_scores_the_subset_and_fills_the_rest(tiny_pair, reduced, dtype):
    _, draft = tiny_pair
    path, ids = reduced
    full = TorchRunner.from_pretrained(draft, max_slots=2, max_model_len=64, dtype=dtype, draft_vocab=True)
    small = TorchRunner.from_pretrained(path, max_slots=2, max_model_len=64, dtype=dtype, draft_vocab=True)
    assert full.head_token_ids is None and small.head_token_ids.numel() == ids.numel()
    batch = ForwardBatch([0, 1], [[5, 9, 14, 3], [7, 7]], [0, 0], [2, 1])
    want, got = full.execute(batch), small.execute(batch)  # (3, V) each
    assert got.shape == want.shape and got.dtype == torch.float32
    outside = torch.ones(got.shape[1], dtype=torch.bool)
    outside[ids] = False
    assert (got[:, outside] == FILL).all()
    if small.native_reason is None:  # the native linear computes every output on its own: the same bits
        assert torch.equal(got[:, ids], want[:, ids])
    else:
        torch.testing.assert_close(got[:, ids], want[:, ids], rtol=0.02 if dtype == "bfloat16" else 1e-5, atol=1e-4)
    assert torch.softmax(got, -1)[:, outside].sum() == 0.0  # q is exactly 0 outside the subset


def test_only_the_draft_runner_reads_the_file(tiny_pair, reduced):
    target, _ = tiny_pair
    path, ids = reduced
    as_target = make_engine(path, max_model_len=64)
    assert as_target.runner.head_token_ids is None  # a target's distribution must cover every token
    eng = make_engine(target, method="draft", draft=path, max_model_len=64)
    assert eng.proposer.inner.runner.head_token_ids.tolist() == ids.tolist()


def test_greedy_output_is_the_targets(tiny_pair, reduced):
    target, _ = tiny_pair
    path, _ = reduced
    base = make_engine(target, max_num_seqs=8, max_model_len=128)
    spec = make_engine(target, method="draft", draft=path, num_speculative_tokens=3, speculative_policy="static",
                       max_num_seqs=8, max_model_len=128)
    texts = ["def add(a, b):", "x = x + 1\nx =", "for i in range(", "import os\nimport"]
    for eng in (base, spec):
        for i, t in enumerate(texts):
            eng.add_request(f"r{i}", eng.tokenizer.encode(t), greedy(24, ignore_eos=True))
    want, got = run_all(base), run_all(spec)
    for i in range(len(texts)):
        assert tokens_of(got[f"r{i}"]) == tokens_of(want[f"r{i}"])
    specs = [final(got[f"r{i}"]).spec for i in range(len(texts))]
    assert sum(s.draft_tokens for s in specs) > 0 and sum(s.accepted_tokens for s in specs) > 0


def test_sampled_distribution_is_the_targets(tiny_pair, reduced):
    """T = 1 with top_k: the first two tokens' joint distribution with a half-vocabulary draft matches plain
    sampling, odd tokens included (the draft cannot propose them: they come from the residual)."""
    target, _ = tiny_pair
    path, ids = reduced
    params = SamplingParams(max_tokens=3, temperature=1.0, top_k=6, ignore_eos=True)
    limits = dict(max_num_seqs=64, max_queue=2000, max_num_batched_tokens=1024, max_model_len=128)
    base = make_engine(target, **limits)
    spec = make_engine(target, method="draft", draft=path, num_speculative_tokens=2, speculative_policy="static",
                       **limits)
    prompt = prompt_containing_its_likely_continuations(base, base.tokenizer.encode("x = x + 1\nx ="), top_k=6)
    a = first_tokens(base, prompt, 800, params, 2)
    b = first_tokens(spec, prompt, 800, params, 2)
    assert spec.counters.draft_tokens > 300
    inside = set(ids.tolist())
    assert any(t[1] not in inside for t in b), "some second tokens lie outside the draft's head"
    cats = sorted(set(a) | set(b))
    table = np.array([[a.count(c) for c in cats], [b.count(c) for c in cats]])
    table = table[:, table.sum(axis=0) >= 10]
    _, p, _, _ = chi2_contingency(table)
    assert p > 1e-3, f"speculative sampling with a reduced draft head differs (p={p:.2e})"


@pytest.mark.parametrize("tensors, match", [
    ({"ids": torch.tensor([1, 2])}, "no 'token_ids'"),
    ({"token_ids": torch.tensor([1.0, 2.0])}, "integer"),
    ({"token_ids": torch.tensor([3, 3, 4])}, "distinct"),
    ({"token_ids": torch.tensor([0, 500])}, r"\[0, 384\)"),
])
def test_a_bad_file_is_refused(tmp_path, tensors, match):
    save_file(tensors, str(tmp_path / DRAFT_VOCAB_FILE))
    with pytest.raises(ValueError, match=match):
        load_draft_vocab(tmp_path, 384)


def test_no_file_means_the_full_head(tmp_path):
    assert load_draft_vocab(tmp_path, 384) is None
