"""Issue 20: the native bf16 linear (engine/native) against oneDNN's prepacked bf16 linear, on SmolLM2-135M's shapes.

Per (shape, rows): median time of 30 calls per side, the two sides alternating in 3 rounds; GB/s of weight traffic and
GFLOP/s; and whether the outputs are the same bits. One torch thread unless --threads.

    flock /tmp/specserve-bench.lock .venv/bin/python tools/bench_native_linear.py --out docs/bench/native_linear.json
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

import engine.native as native_kernels  # noqa: E402
from bench.report import machine_info  # noqa: E402
from engine.models.cpu_linear import PackedLinear, packing_available  # noqa: E402
from engine.native.linear import NativeLinear  # noqa: E402

SHAPES = {"qkv_proj": (960, 576), "o_proj": (576, 576), "gate_up_proj": (3072, 576), "down_proj": (576, 1536),
          "lm_head": (49152, 576)}  # (out, in)


def timed(fn, x, calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="2,16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not (native_kernels.load() and packing_available()):
        sys.exit(f"needs both kernels: native {native_kernels.native_reason()!r}, oneDNN {packing_available()}")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    cells = {}
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            lin = nn.Linear(k, n, bias=False)
            lin.weight.data = (torch.randn(n, k, generator=gen) * 0.05).bfloat16()
            sides = {"native": NativeLinear(lin), "onednn": PackedLinear(lin)}
            for rows in (int(r) for r in args.rows.split(",")):
                x = torch.randn(rows, k, generator=gen).bfloat16()
                per = {s: [] for s in sides}
                for r in range(args.rounds):
                    for s in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                        per[s].append(timed(sides[s], x, 30))
                t = {s: median(v) for s, v in per.items()}
                same = torch.equal(sides["native"](x), sides["onednn"](x))
                cells[f"{name}/{rows}"] = {
                    "shape_out_in": [n, k], "rows": rows,
                    **{f"{s}_us": round(v * 1e6, 1) for s, v in t.items()},
                    **{f"{s}_weight_GBps": round(n * k * 2 / v / 1e9, 1) for s, v in t.items()},
                    **{f"{s}_GFLOPps": round(2 * rows * n * k / v / 1e9, 1) for s, v in t.items()},
                    "onednn_over_native": round(t["onednn"] / t["native"], 2), "same_bits": same,
                }
                print(name, rows, cells[f"{name}/{rows}"], flush=True)
    out = {"threads": args.threads, "rounds": args.rounds, "machine": machine_info(), "cells": cells,
           "command": " ".join(["python", *sys.argv])}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
