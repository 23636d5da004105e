"""Issue 20: the torch runner's decode step (ms) on the real default model, eager vs compiled, 1 and 2 threads.

Configurations, all bf16 weights with the fp32 residual stream:
  eager-unpacked-head   eager, the tied head left as a plain nn.Linear (the behaviour before issue 20)
  eager                 eager, every linear packed for oneDNN (the default)
  compiled              --torch-compile: inductor graphs (freezing) for decode, one per batch bucket family
  eager-sdpa            eager with SDPA attention instead of the batch-invariant attention (the default before
                        issue 15; what the invariance costs)

`--tokens-per-row 5` times verify rows (the last token + 4 drafts) instead of decode rows.

Each cell (config, threads, batch) runs `--steps` decode steps over B slots prefilled with a 100-token prompt, at the
same positions every round, and keeps the median step; rounds interleave configs and threads (order rotated), and the
report gives the median over rounds with min-max. The weight-streaming bound is weight bytes / 20 GB/s (DESIGN.md).

    flock /tmp/specserve-bench.lock .venv/bin/python tools/bench_decode_step.py --model /tmp/smollm2-hf \
        --rounds 3 --out docs/bench/decode_step.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.report import machine_info  # noqa: E402
from engine.models.loader import load_model  # noqa: E402
from engine.runners.base import ForwardBatch  # noqa: E402
from engine.runners.torch_runner import TorchRunner  # noqa: E402

PROMPT_LEN = 100


def build(config: str, model_dir: str, slots: int, cache_dir: str) -> tuple[TorchRunner, float]:
    t0 = time.monotonic()
    model = load_model(model_dir, dtype=torch.bfloat16)
    runner = TorchRunner(model, max_slots=slots, max_model_len=1024, compile=config == "compiled",
                         compile_cache_dir=cache_dir, batch_invariant=False if config == "eager-sdpa" else None)
    if config == "eager-unpacked-head" and model.config.tie_word_embeddings:
        head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
        head.weight = model.embed_tokens.weight
        model.lm_head = head
    runner.warmup()
    prompt = [(7 * i) % 1000 + 10 for i in range(PROMPT_LEN)]
    for s in range(slots):
        runner.execute(ForwardBatch([s], [prompt], [0], [1]))
    return runner, time.monotonic() - t0


def cell(runner: TorchRunner, b: int, steps: int, per_row: int = 1) -> tuple[float, list[int]]:
    times, tokens = [], []
    for i in range(steps):
        row = [11 + i + j for j in range(per_row)]
        batch = ForwardBatch(list(range(b)), [row] * b, [PROMPT_LEN + i * per_row] * b, [per_row] * b)
        t = time.perf_counter()
        logits = runner.execute(batch)
        tokens.append(int(logits[0].argmax()))  # the host sync a real step does
        times.append(time.perf_counter() - t)
    return median(times) * 1e3, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--configs", default="eager-unpacked-head,eager,compiled")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tokens-per-row", type=int, default=1, help="1: decode rows; 1 + K: verify rows")
    ap.add_argument("--cache-dir", default="/tmp/specserve-inductor-bench")
    ap.add_argument("--out")
    args = ap.parse_args()
    configs, threads = args.configs.split(","), [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    torch.set_num_threads(1)
    runners, build_s = {}, {}
    for c in configs:
        runners[c], build_s[c] = build(c, args.model, max(batches), args.cache_dir)
        print(f"built {c} in {build_s[c]:.1f} s", flush=True)
    cells: dict[str, list[float]] = {}
    tokens: dict[str, list[int]] = {}
    for r in range(args.rounds):
        for t in threads[r % len(threads):] + threads[:r % len(threads)]:
            torch.set_num_threads(t)
            for c in configs[r % len(configs):] + configs[:r % len(configs)]:
                for b in batches:
                    ms, toks = cell(runners[c], b, args.steps, args.tokens_per_row)
                    key = f"{c}/t{t}/b{b}"
                    cells.setdefault(key, []).append(round(ms, 3))
                    tokens[key] = toks
                    print(f"round {r} {key}: {ms:.2f} ms", flush=True)
    weight_bytes = sum(f.stat().st_size for f in Path(args.model).glob("*.safetensors"))  # bf16 checkpoint
    summary = {k: {"median_ms": round(median(v), 3), "min_ms": min(v), "max_ms": max(v), "rounds_ms": v}
               for k, v in cells.items()}
    ref = "eager" if "eager" in configs else configs[0]
    agree = {k: sum(a == b for a, b in zip(v, tokens[f"{ref}/{k.split('/', 1)[1]}"], strict=True)) / len(v)
             for k, v in tokens.items()}
    out = {"model": args.model, "dtype": "bfloat16 weights, fp32 residual", "steps_per_cell": args.steps,
           "rounds": args.rounds, "prompt_len": PROMPT_LEN, "build_and_warmup_s": build_s,
           "weight_bytes": weight_bytes, "weight_streaming_bound_ms_at_20GBps": round(weight_bytes / 20e9 * 1e3, 2),
           "cells": summary, "argmax_agreement_with_eager": agree, "machine": machine_info(),
           "command": " ".join(["python", *sys.argv])}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
