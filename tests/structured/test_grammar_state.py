"""Grammar compilation, caching, per-sequence matcher state (tentative drafts, rollback) and mask application."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from engine.errors import InvalidRequestError
from engine.structured import GrammarCompiler, GrammarSpec
from engine.structured.masking import apply_allowed, unpack_bitmask

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tok(tiny_pair):
    return AutoTokenizer.from_pretrained(str(tiny_pair[0]))


@pytest.fixture()
def compiler(tok):
    return GrammarCompiler(tok, len(tok), [tok.eos_token_id])


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_forced_prefix_then_free_tokens(compiler, tok):
    state = compiler.new_state(GrammarSpec.json_schema(PERSON))
    forced = state.forced_tokens(16)
    assert tok.decode(forced) == '{"name": "'  # properties in the client's order, json.dumps separators
    ids = encode(tok, '{"name": "Bob", "age": 3}')
    assert state.valid_prefix(ids) == len(ids)
    assert state.valid_prefix(encode(tok, '{"age": 3}')) < len(encode(tok, '{"age": 3}'))


def test_masks_for_drafts_then_commit_rolls_tentative_back(compiler, tok):
    state = compiler.new_state(GrammarSpec.json_schema(PERSON))
    ids = encode(tok, '{"name": "Bob", "age": 3}')
    masks = state.masks_for(ids[:6])
    assert len(masks) == 7
    for j, m in enumerate(masks[:6]):  # row j allows the draft that follows it
        assert m is not None and bool(m[ids[j]])
    # A rejected draft path: commit only 2 tokens; the matcher must be back at exactly those 2.
    state.commit(ids[:2])
    assert state.num_committed == 2
    assert state.valid_prefix(ids[2:]) == len(ids) - 2
    fresh = compiler.new_state(GrammarSpec.json_schema(PERSON))
    fresh.commit(ids[:2])
    assert torch.equal(state.allowed_after([]), fresh.allowed_after([]))


def test_invalid_draft_gives_no_mask_and_does_not_poison_the_matcher(compiler, tok):
    state = compiler.new_state(GrammarSpec.json_schema(PERSON))
    bad = encode(tok, "hello")
    assert state.allowed_after(bad) is None
    state.commit(encode(tok, '{"name": "'))  # still usable
    assert not state.is_finished


def test_finished_grammar_allows_only_eos(compiler, tok):
    state = compiler.new_state(GrammarSpec.json_schema(PERSON))
    state.commit(encode(tok, '{"name": "Bob", "age": 3}'))
    assert state.is_accepting
    assert state.allowed_after([]).nonzero().flatten().tolist() == [tok.eos_token_id]


def test_cache_and_unsupported_feature(compiler):
    compiler.compile(GrammarSpec.json_schema(PERSON))
    compiler.compile(GrammarSpec.json_schema(PERSON))
    assert compiler.stats.compiled == 1
    with pytest.raises(InvalidRequestError) as e:
        compiler.compile(GrammarSpec.json_schema({"type": "object", "if": {"type": "object"}, "then": {}}))
    assert '"if"' in e.value.message and e.value.field == "structured"
    with pytest.raises(InvalidRequestError, match="look-around"):
        compiler.compile(GrammarSpec.json_schema({"type": "string", "pattern": "(?<=a)b"}))


def test_unpack_bitmask_matches_bits():
    packed = torch.tensor([[0b101, -1], [0, -(1 << 31)]], dtype=torch.int32)  # (2, 2): 64 token slots
    allowed = unpack_bitmask(packed, 40)
    assert allowed.shape == (2, 40)
    assert allowed[0, :3].tolist() == [True, False, True] and allowed[0, 32:].all()
    assert not allowed[1].any()  # bit 31 of word 1 (the sign bit) is token 63, past the vocabulary
    assert unpack_bitmask(packed, 70)[1, 63] and not unpack_bitmask(packed, 70)[:, 64:].any()


def test_apply_allowed_masks_and_keeps_emptied_rows_sampleable():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -math.inf, 5.0]])
    allowed = torch.tensor([[True, True, False], [False, True, False]])
    apply_allowed(logits, [0, 1], allowed)
    assert logits[0].tolist() == [1.0, 2.0, -math.inf]
    # Row 1's only allowed token had been masked (min_tokens / bias): the grammar's choice wins.
    assert logits[1].tolist() == [-math.inf, 0.0, -math.inf]


def test_batched_masks_equal_row_by_row_masks(compiler, tok):
    from engine.structured.batch import prefetch_masks

    docs = ['{"name": "Bob", "age": 3}', '{"name": "Al", "age": 41}', '{"name": "Xi", "age": 7}']
    batched, single = [], []
    for d in docs:
        ids = encode(tok, d)
        for bucket in (batched, single):
            st = compiler.new_state(GrammarSpec.json_schema(PERSON))
            st.commit(ids[:3])
            bucket.append((st, ids[3:8]))
    prefetch_masks([s for s, _ in batched], [d for _, d in batched])
    for (b, d), (s, _) in zip(batched, single, strict=True):
        assert b.has_masks_for(d)
        for mb, ms in zip(b.masks_for(d), s.masks_for(d), strict=True):
            assert (mb is None and ms is None) or torch.equal(mb, ms)
