"""Issue 16: time to first token at concurrency 1, engine on a thread vs engine in its own process (`--engine-process`),
two `specserve serve` subprocesses on the demo target, rounds interleaved (order flipping), streaming /v1/completions.

    flock /tmp/specserve-bench.lock python tools/bench_engine_process_ttft.py --out docs/bench/engine_process_ttft.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare import Server, free_port  # noqa: E402
from bench.datasets import load_dataset  # noqa: E402
from bench.loadgen import RequestSpec, run_load  # noqa: E402
from bench.report import machine_info  # noqa: E402


def ttfts(base_url: str, items: list[dict], n: int, total: int) -> list[float]:
    spec = RequestSpec(model="bench", max_tokens=n, temperature=0.0)
    results, _ = asyncio.run(run_load(base_url, items, spec, num_prompts=total, concurrency=1))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return [r.ttft for r in results if r.ttft is not None]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from engine.demo_pair import target_dir

    model = str(target_dir())
    items = load_dataset("code")[:64]
    servers = {}
    for mode, flag in (("thread", "--no-engine-process"), ("process", "--engine-process")):
        port = free_port()
        servers[mode] = Server(mode, [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port",
                                      str(port), "--model", model, "--served-model-name", "bench",
                                      "--speculative-method", "none", "--num-threads", "1", flag], port=port).start()
    res: dict = {"machine": machine_info(), "args": vars(args), "ttft_s": {"thread": [], "process": []}}
    try:
        for s in servers.values():
            ttfts(s.base_url, items, 4, 4)  # warm-up
        for rnd in range(args.rounds):
            for mode in (["thread", "process"] if rnd % 2 == 0 else ["process", "thread"]):
                got = ttfts(servers[mode].base_url, items, args.max_tokens, args.requests)
                res["ttft_s"][mode].append(median(got))
                print(f"round {rnd} {mode}: median TTFT {1000 * median(got):.2f} ms", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    med = {m: median(v) for m, v in res["ttft_s"].items()}
    res["median_ttft_s"] = med
    res["process_over_thread"] = med["process"] / med["thread"]
    print(f"TTFT c=1: thread {1000 * med['thread']:.2f} ms, process {1000 * med['process']:.2f} ms "
          f"(process/thread {res['process_over_thread']:.3f})")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
