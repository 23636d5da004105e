"""Issue 2: decode tokens/s of the engine (torch runner) at batch 1, 8, 32 vs Hugging Face `generate` on the same weights.

Model: random-init Llama, hidden 1024, 8 layers (MLP 2816, 16 heads / 8 KV, vocab 32000), fixed seed, saved with
save_pretrained to a temp dir and loaded by the project's loader (engine) and by transformers (HF), same dtype.

Decode tokens/s = B * (N - 1) / (t(N) - t(1)): each side runs the same B prompts (lengths 24..32, HF left-padded)
to N new tokens and to 1 new token, so prefill and per-request fixed costs cancel. Greedy, EOS ignored. Engine and HF
runs alternate (--repeats rounds) and each figure is the median, so load from other processes hits both alike.

    python tools/bench_engine_core.py --dtypes float32,bfloat16 --out docs/bench/engine_core.json

Goals: engine >= 1.0x HF at batch 1; engine batch-32 throughput >= 10x engine batch 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.report import machine_info  # noqa: E402
from bench.synthetic import build_random_llama, engine_for, run_to_idle  # noqa: E402
from engine.models.hf_compat import dtype_kwarg  # noqa: E402
from engine.sampling.params import SamplingParams  # noqa: E402


def prompts(b: int, seed: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (24 + (i * 5) % 9,), generator=g).tolist() for i in range(b)]


def engine_time(engine, ps: list[list[int]], n: int) -> float:
    params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    for i, p in enumerate(ps):
        engine.add_request(f"r{i}-{n}-{t0}", p, params)
    got = run_to_idle(engine)
    dt = time.perf_counter() - t0
    assert got == n * len(ps), (got, n, len(ps))
    return dt


def hf_time(model, ps: list[list[int]], n: int) -> float:
    width = max(len(p) for p in ps)
    ids = torch.tensor([[2] * (width - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=2, eos_token_id=None)
    dt = time.perf_counter() - t0
    assert out.shape[1] - width == n
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--hf-batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's choice)")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    batches = [int(x) for x in args.batches.split(",")]
    hf_batches = [int(x) for x in args.hf_batches.split(",")]
    n = args.new_tokens
    results: dict = {"machine": machine_info(), "args": vars(args), "dtypes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_random_llama(Path(tmp) / "m", vocab=args.vocab, hidden=args.hidden, layers=args.layers)
        for dtype in args.dtypes.split(","):
            engine = engine_for(model_dir, dtype=dtype, max_num_seqs=max(batches), max_model_len=256,
                                max_num_batched_tokens=2048,
                                **({"num_threads": args.threads} if args.threads else {}))
            hf = AutoModelForCausalLM.from_pretrained(str(model_dir), **dtype_kwarg(getattr(torch, dtype))).eval()
            ps = {b: prompts(b, b, args.vocab) for b in set(batches) | set(hf_batches)}
            engine_time(engine, ps[1], 4)  # warm-up
            hf_time(hf, ps[1], 4)
            samples: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                for b in batches:
                    tps = b * (n - 1) / (engine_time(engine, ps[b], n) - engine_time(engine, ps[b], 1))
                    samples.setdefault(f"engine_b{b}", []).append(tps)
                    if b in hf_batches:
                        tps = b * (n - 1) / (hf_time(hf, ps[b], n) - hf_time(hf, ps[b], 1))
                        samples.setdefault(f"hf_b{b}", []).append(tps)
            med = {k: median(v) for k, v in samples.items()}
            ratios = {f"engine/hf @b{b}": med[f"engine_b{b}"] / med[f"hf_b{b}"] for b in hf_batches if b in batches}
            ratios[f"engine b{max(batches)} / engine b1"] = med[f"engine_b{max(batches)}"] / med["engine_b1"]
            results["dtypes"][dtype] = {"decode_tok_s": med, "samples": samples, "ratios": ratios}
            print(f"\n== {dtype}: decode tokens/s (median of {args.repeats}), {n} new tokens")
            for k, v in med.items():
                print(f"  {k:12s} {v:9.1f}")
            for k, v in ratios.items():
                print(f"  {k:24s} {v:6.2f}x")
            b1 = ratios.get("engine/hf @b1")
            print(f"  goal engine >= 1.0x HF @b1: {'met' if b1 and b1 >= 1.0 else 'NOT met'}; "
                  f"goal b{max(batches)} >= 10x b1: "
                  f"{'met' if ratios[f'engine b{max(batches)} / engine b1'] >= 10 else 'NOT met'}")
            del engine, hf
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
