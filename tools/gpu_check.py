"""One prepared CUDA check (run on a lent GPU machine): correctness of the engine on CUDA and decode throughput
side by side with Hugging Face `generate` on the same random-init weights.

    python tools/gpu_check.py [--out results.json]

Prints a JSON report: greedy spec-vs-plain identity on CUDA (bf16), engine decode tokens/s at batch 1/8/32, HF
generate tokens/s at batch 1/8, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.models.hf_compat import dtype_kwarg  # noqa: E402
from engine.sampling.params import SamplingParams  # noqa: E402
from tests.helpers.engines import make_engine, run_all, tokens_of  # noqa: E402
from tests.helpers.tiny_models import build_tokenizer  # noqa: E402


def build_model(root: Path, hidden=1024, layers=8, vocab=None) -> Path:
    import transformers

    root.mkdir(parents=True, exist_ok=True)
    build_tokenizer(root, vocab_size=512)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(root)))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                   num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                   num_key_value_heads=hidden // 128, max_position_embeddings=1024,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(root))
    return root


def engine_tps(path: Path, batch: int, new_tokens: int, **kw) -> float:
    eng = make_engine(path, device="cuda", dtype="bfloat16", max_num_seqs=max(batch, 1), max_model_len=512,
                      max_num_batched_tokens=max(512, batch * 8), **kw)
    ids = list(range(10, 26))
    eng.add_request("warm", ids, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    run_all(eng)
    for i in range(batch):
        eng.add_request(f"r{i}", ids, SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_all(eng)
    torch.cuda.synchronize()
    return batch * new_tokens / (time.perf_counter() - t0)


def hf_tps(path: Path, batch: int, new_tokens: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), **dtype_kwarg(torch.bfloat16)).cuda().eval()
    ids = torch.arange(10, 26, device="cuda").repeat(batch, 1)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=2)
    model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=2)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, **kw)
    torch.cuda.synchronize()
    return batch * new_tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    path = build_model(root / "m")
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}

    # Correctness on CUDA: speculation (target as its own draft, and n-gram) gives the plain greedy tokens.
    outs = {}
    for method, draft in (("none", None), ("draft", path), ("ngram", None)):
        eng = make_engine(path, method=method, draft=draft, device="cuda", dtype="bfloat16", max_num_seqs=4,
                          max_model_len=256, num_speculative_tokens=4, speculative_policy="static")
        for i in range(4):
            eng.add_request(f"r{i}", list(range(10 + i, 30 + i)), SamplingParams(max_tokens=32, temperature=0.0,
                                                                                ignore_eos=True))
        res = run_all(eng)
        outs[method] = {k: tokens_of(v) for k, v in res.items()}
        report[f"{method}_accepted/draft"] = [eng.counters.accepted_tokens, eng.counters.draft_tokens]
    report["greedy_identical_draft"] = outs["draft"] == outs["none"]
    report["greedy_identical_ngram"] = outs["ngram"] == outs["none"]

    n = 128
    for b in (1, 8, 32):
        report[f"engine_tps_b{b}"] = round(engine_tps(path, b, n), 1)
    for b in (1, 8):
        report[f"hf_tps_b{b}"] = round(hf_tps(path, b, n), 1)
    report["engine/hf_b1"] = round(report["engine_tps_b1"] / report["hf_tps_b1"], 2)
    report["engine/hf_b8"] = round(report["engine_tps_b8"] / report["hf_tps_b8"], 2)
    report["b32/b1"] = round(report["engine_tps_b32"] / report["engine_tps_b1"], 2)
    report["engine_tps_b1_selfdraft_k4"] = round(engine_tps(path, 1, n, method="draft", draft=path,
                                                            num_speculative_tokens=4,
                                                            speculative_policy="static"), 1)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
