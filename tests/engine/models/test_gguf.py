"""GGUF loading: a tiny seeded Llama written as a GGUF file (with a byte-level BPE tokenizer and a chat template) is
converted once into a cached HF checkpoint; our model on that checkpoint gives transformers' own GGUF load's greedy
tokens; a second resolve reuses the cache without converting; a changed file gets a new entry."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from engine.models import gguf as gguf_mod
from engine.models.config import ModelConfig
from engine.models.hf_compat import dtype_kwarg
from engine.models.loader import load_model, resolve_model_path
from engine.models.tokenizer import load_tokenizer
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner

gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers' GGUF path requires it

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
HIDDEN, LAYERS, HEADS, KV_HEADS, FF, THETA = 32, 2, 4, 2, 64, 50000.0
PROMPT = "The quick brown fox jumps over the lazy dog."


def _bpe() -> tuple[list[str], list[str]]:
    """(tokens in id order, merges) of a byte-level BPE trained on a few lines; specials first (ids 0, 1, 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([PROMPT, "hello world, how are you today?", "def f(x):\n    return x\n"] * 10, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return [t for t, _ in vocab], merges


def write_tiny_gguf(path, seed: int = 0) -> int:
    """A 2-layer Llama (hidden 32, GQA 4/2 heads, tied head) with F32 tensors; returns the vocabulary size."""
    tokens, merges = _bpe()
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(THETA)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(TEMPLATE)
    rng = np.random.default_rng(seed)
    kv = KV_HEADS * HIDDEN // HEADS

    def t(*shape, scale=0.15):  # numpy (out, in) = the HF layout; GGUF records the dims reversed
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", t(vocab, HIDDEN, scale=0.5))
    w.add_tensor("output_norm.weight", 1 + t(HIDDEN, scale=0.1))
    for i in range(LAYERS):
        for name, shape in (("attn_q", (HIDDEN, HIDDEN)), ("attn_k", (kv, HIDDEN)), ("attn_v", (kv, HIDDEN)),
                            ("attn_output", (HIDDEN, HIDDEN)), ("ffn_gate", (FF, HIDDEN)), ("ffn_up", (FF, HIDDEN)),
                            ("ffn_down", (HIDDEN, FF))):
            w.add_tensor(f"blk.{i}.{name}.weight", t(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + t(HIDDEN, scale=0.1))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + t(HIDDEN, scale=0.1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return vocab


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    f = d / "tiny.gguf"
    vocab = write_tiny_gguf(f)
    return f, vocab, tmp_path_factory.mktemp("cache")


def _hf_gguf(f):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)
    model = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, **dtype_kwarg(torch.float32)).eval()
    return tok, model


def _greedy(runner: TorchRunner, ids: list[int], n: int) -> list[int]:
    logits = runner.execute(ForwardBatch([0], [ids], [0], [1]))
    out = [int(logits[-1].argmax())]
    for i in range(n - 1):
        logits = runner.execute(ForwardBatch([0], [[out[-1]]], [len(ids) + i], [1]))
        out.append(int(logits[-1].argmax()))
    return out


def test_gguf_converts_to_a_portable_bf16_checkpoint(tiny):
    f, vocab, cache = tiny
    d = resolve_model_path(f, cache_dir=cache)
    assert d.parent == cache / "gguf" and d.name.startswith("tiny-")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["rope_theta"] == THETA and cfg["rope_parameters"]["rope_theta"] == THETA  # both spellings
    assert cfg["dtype"] == cfg["torch_dtype"] == "bfloat16" and "quantization_config" not in cfg
    mc = ModelConfig.from_dir(d)
    assert (mc.num_layers, mc.hidden_size, mc.num_kv_heads, mc.vocab_size) == (LAYERS, HIDDEN, KV_HEADS, vocab)
    assert mc.tie_word_embeddings
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "pt") as sf:
        assert sf.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert "lm_head.weight" not in set(sf.keys())
    tok = load_tokenizer(d)
    ref_tok, _ = _hf_gguf(f)
    assert tok.encode(PROMPT) == ref_tok.encode(PROMPT)
    msgs = [{"role": "user", "content": "hello"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"


def test_greedy_parity_with_transformers_gguf_load(tiny):
    f, _, cache = tiny
    d = gguf_mod.convert_gguf(f, cache / "fp32", dtype=torch.float32)  # exact weights: parity in fp32
    ref_tok, ref = _hf_gguf(f)
    ids = ref_tok.encode(PROMPT)
    with torch.no_grad():
        want = ref.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(ids):].tolist()
        ref_logits = ref(torch.tensor([ids])).logits[0]  # (T, vocab): every position, so a mapping error shows
    runner = TorchRunner(load_model(d, dtype=torch.float32), max_slots=1, max_model_len=64)
    got_logits = runner.execute(ForwardBatch([0], [ids], [0], [len(ids)]))
    torch.testing.assert_close(got_logits, ref_logits, atol=1e-4, rtol=0)
    assert (ref_logits[1:] - ref_logits[:-1]).abs().max() > 0.1  # positions differ: not a constant output
    assert _greedy(runner, ids, 12) == want


def test_second_resolve_uses_the_cache(tiny, monkeypatch, caplog):
    f, _, cache = tiny
    first = resolve_model_path(f, cache_dir=cache)

    def boom(*a, **k):
        raise AssertionError("converted again although the cache holds this file")

    monkeypatch.setattr(gguf_mod, "_write_checkpoint", boom)
    with caplog.at_level("INFO", logger="specserve.engine"):
        assert resolve_model_path(f.parent, cache_dir=cache) == first  # a directory holding the .gguf works too
    assert str(first) in caplog.text
    monkeypatch.setenv(gguf_mod.CACHE_ENV, str(cache))
    assert resolve_model_path(f) == first  # SPECSERVE_CACHE is the default cache


def test_changed_file_gets_a_new_entry(tiny, tmp_path):
    f, _, _ = tiny
    copy = tmp_path / "tiny.gguf"
    copy.write_bytes(f.read_bytes())
    a = gguf_mod.cache_entry(copy, tmp_path)
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    assert gguf_mod.cache_entry(copy, tmp_path) != a


def test_interrupted_conversion_leaves_no_entry(tiny, tmp_path, monkeypatch):
    f, _, _ = tiny

    def fail(src, out, dtype):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_mod, "_write_checkpoint", fail)
    with pytest.raises(KeyboardInterrupt):
        gguf_mod.convert_gguf(f, tmp_path)
    assert not gguf_mod.is_converted(gguf_mod.cache_entry(f.resolve(), tmp_path))
    assert list((tmp_path / "gguf").iterdir()) == []


def test_directory_with_two_gguf_files_is_an_error(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"x")
    with pytest.raises(ValueError, match="2 .gguf files"):
        resolve_model_path(tmp_path)
