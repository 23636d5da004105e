"""Issue 16: where the engine-process boundary spends a request's time to first token, without HTTP.

Drives `engine.process_engine.ProcessEngine` (the API side of the engine-core process, as `specserve serve` uses it)
directly from an event loop at concurrency 1, one token per request, and splits each request's time with the stamps
its first `RequestOutput` carries (time.monotonic, shared by both processes on one host):

    add_request -> arrival_time                 API-side admission (checks, booking, pickling the params)
    arrival_time -> first_scheduled_time        the Inbox message to the core, its wake-up, enqueue, schedule
    first_scheduled_time -> first_token_time    the prefill step up to the token's selection
    first_token_time -> the consumer has it     the rest of that step, StepBatch encode, the socket hop back, the
                                                receiver thread, the event-loop wake-up, the stream's queue

    flock /tmp/specserve-bench.lock python tools/probe_process_boundary.py --out docs/bench/issue16_boundary_toy.json
    flock /tmp/specserve-bench.lock python tools/probe_process_boundary.py --default-pair \
        --out docs/bench/issue16_boundary_real.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("admission", "to_core_and_schedule", "prefill_to_token", "token_to_consumer", "total")


async def _measure(engine, prompts: list[list[int]], warmup: int) -> list[dict[str, float]]:
    from engine.sampling.params import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    rows = []
    for i, ids in enumerate(prompts):
        t0 = time.monotonic()
        stream = engine.add_request(ids, params)
        first = None
        async for out in stream:
            if first is None:
                first = (out, time.monotonic())
        out, got = first
        if i >= warmup:
            rows.append({"admission": out.arrival_time - t0,
                         "to_core_and_schedule": out.first_scheduled_time - out.arrival_time,
                         "prefill_to_token": out.first_token_time - out.first_scheduled_time,
                         "token_to_consumer": got - out.first_token_time, "total": got - t0,
                         "prompt_tokens": len(ids)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--default-pair", action="store_true", help="the embedded default pair (method auto) instead of "
                    "the demo target (K = 0)")
    ap.add_argument("--dataset", default="code")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from bench.datasets import load_dataset
    from bench.report import machine_info
    from config.loader import load_settings
    from engine.process_engine import ProcessEngine

    cli = {"speculative_method": "auto", "device": "cpu", "num_threads": args.threads, "engine_cpus": "none"}
    if not args.default_pair:
        from engine.demo_pair import target_dir
        cli.update(model=str(target_dir()), speculative_method="none")
    engine = ProcessEngine.from_settings(load_settings(cli, environ={}))
    engine.start()
    try:
        items = load_dataset(args.dataset)
        prompts = [engine.tokenizer(items[i % len(items)]["prompt"])["input_ids"] for i in range(args.requests)]
        rows = asyncio.run(_measure(engine, prompts, args.warmup))
    finally:
        engine.shutdown()
    summary = {s: {"median_ms": 1e3 * median(r[s] for r in rows), "min_ms": 1e3 * min(r[s] for r in rows),
                   "max_ms": 1e3 * max(r[s] for r in rows)} for s in STAGES}
    for s in STAGES:
        print(f"{s:>22}: median {summary[s]['median_ms']:.3f} ms [{summary[s]['min_ms']:.3f}.."
              f"{summary[s]['max_ms']:.3f}]")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine_info(), "args": vars(args), "summary": summary,
                                              "requests": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
