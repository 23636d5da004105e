"""Incremental detokenization: correct deltas across multi-byte characters, stop strings across token boundaries."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok(tiny_pair):
    return AutoTokenizer.from_pretrained(str(tiny_pair[0]))


def stream(tok, text: str, stop=(), prompt="x = 1\n"):
    d = IncrementalDetokenizer(tok, tok.encode(prompt), stop)
    ids = tok.encode(text)
    deltas, hit = [], None
    for t in ids:
        hit = d.add_token(t)
        if hit:
            break
        deltas.append(d.take_delta(final=False))
    deltas.append(d.take_delta(final=True))
    return deltas, hit, ids


def test_multibyte_characters_split_across_tokens_come_out_whole(tok):
    text = "naïve café — 日本語 🙂 done"
    deltas, _, ids = stream(tok, text)
    assert len(ids) > 8
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    # The emoji is several byte-level tokens; some step must have held text back and emitted it later.
    assert "" in deltas[:-1]


def test_stop_string_across_token_boundary_is_cut_and_never_emitted(tok):
    text = "alpha beta STOP gamma"
    deltas, hit, ids = stream(tok, text, stop=["STOP"])
    assert hit == "STOP"
    assert "".join(deltas) == "alpha beta "
    assert not any("S" in d and "T" in d for d in deltas)


def test_earliest_of_several_stop_strings_wins(tok):
    deltas, hit, _ = stream(tok, "one two three four", stop=["four", "two"])
    assert hit == "two"
    assert "".join(deltas) == "one "


def test_no_stop_means_no_holdback(tok):
    d = IncrementalDetokenizer(tok, [], ())
    for t in tok.encode("abc def"):
        d.add_token(t)
    assert d.take_delta(final=False) == "abc def"
