"""Soak test: keep a specserve server busy for a while and report memory growth and latency drift.

    python tools/soak.py --tiny --duration 180 --interval 30          # starts a server on a tiny random model
    python tools/soak.py --duration 3600 -- --model /models/x --max-num-seqs 16   # starts `specserve serve ...`
    python tools/soak.py --url http://127.0.0.1:8000 --pid 1234 --duration 600   # an already running server

Closed-loop clients (`--concurrency`) send a mix of streaming and non-streaming chat/completions requests; a share of
them (`--disconnect-ratio`) leave mid-stream on purpose. Every `--interval` seconds the script samples the server's RSS
(/proc/PID/status, the process and its children) and the e2e latency of the requests finished in that window (p50,
p99), and counts completed / rejected (429) / lost (anything else) requests. At the end: RSS growth from the first
window to the last, latency drift (last window's p50/p99 over the first's), whether the server went idle again (every
slot free), and the table. Not run in CI. Exit status 1 when a request was lost or the server did not go idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"specserve listening on (http://\S+)")


@dataclass
class Window:
    start: float
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    completed: int = 0
    rejected: int = 0
    lost: int = 0
    disconnected: int = 0
    rss_mb: float = 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its descendants, in MiB (Linux /proc)."""
    total_kb, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total_kb / 1024


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def start_server(serve_args: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", "0", *serve_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # keep draining so the server never blocks on a full pipe
            m = _LISTENING.search(line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
            if "ERROR" in line or "Traceback" in line:
                sys.stderr.write("server: " + line)

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(300):
        proc.kill()
        raise SystemExit("server did not start within 300 s")
    url = found[0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server never became ready")


def _request(i: int, model: str, max_tokens: int) -> tuple[str, dict]:
    stream = i % 3 != 0
    if i % 2:
        return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": f"Tell me {i}."}],
                                        "max_tokens": max_tokens, "stream": stream, "temperature": 0.8, "seed": i}
    return "/v1/completions", {"model": model, "prompt": f"def f{i}(x):\n", "max_tokens": max_tokens,
                               "stream": stream, "temperature": 0.0}


async def one(c: httpx.AsyncClient, i: int, model: str, max_tokens: int, disconnect: bool,
              timeout: float) -> tuple[str, float, float | None]:
    """(outcome, e2e seconds, ttft seconds or None); outcome: completed / rejected / lost / disconnected."""
    path, body = _request(i, model, max_tokens)
    t0 = time.monotonic()
    ttft = None

    async def call() -> str:
        nonlocal ttft
        if not body["stream"]:
            r = await c.post(path, json=body)
            if r.status_code == 200 and r.json()["choices"][0]["finish_reason"]:
                return "completed"
            return "rejected" if r.status_code == 429 else "lost"
        async with c.stream("POST", path, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return "rejected" if r.status_code == 429 else "lost"
            chunks, last = 0, ""
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                last = line
                chunks += 1
                if line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: "):])
                if "error" in event:
                    return "lost"
                if ttft is None and any(ch.get("text") or ch.get("delta", {}).get("content")
                                        for ch in event.get("choices", [])):
                    ttft = time.monotonic() - t0
                if disconnect and chunks >= 3:
                    return "disconnected"
            return "completed" if last == "data: [DONE]" else "lost"

    try:
        outcome = await asyncio.wait_for(call(), timeout)
    except (httpx.HTTPError, asyncio.TimeoutError, ValueError):  # ValueError: an event that is not JSON
        outcome = "lost"
    return outcome, time.monotonic() - t0, ttft


async def soak(url: str, pid: int | None, args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.request_timeout) as c:
        model = args.model_name or (await c.get("/v1/models")).json()["data"][0]["id"]
        t_start = time.monotonic()
        end = t_start + args.duration
        windows = [Window(t_start)]
        counter = iter(range(10**9))
        rnd = random.Random(args.seed)

        async def worker() -> None:
            while time.monotonic() < end:
                i = next(counter)
                outcome, e2e, ttft = await one(c, i, model, args.max_tokens, rnd.random() < args.disconnect_ratio,
                                               args.request_timeout)
                w = windows[-1]
                if outcome == "completed":
                    w.completed += 1
                    w.latencies.append(e2e)
                    if ttft is not None:
                        w.ttfts.append(ttft)
                elif outcome == "rejected":
                    w.rejected += 1
                    await asyncio.sleep(0.2)  # honour Retry-After loosely
                elif outcome == "disconnected":
                    w.disconnected += 1
                else:
                    w.lost += 1

        async def sampler() -> None:
            while time.monotonic() < end:
                await asyncio.sleep(min(args.interval, max(0.0, end - time.monotonic())))
                if pid is not None:
                    windows[-1].rss_mb = rss_mb(pid)
                report_window(len(windows) - 1, windows[-1])
                if time.monotonic() < end:
                    windows.append(Window(time.monotonic()))

        if pid is not None:
            rss_start = rss_mb(pid)
        await asyncio.gather(sampler(), *(worker() for _ in range(args.concurrency)))
        idle, body = False, {}
        for _ in range(300):
            body = (await c.get("/health")).json()
            if body.get("running") == 0 and body.get("waiting") == 0 and body.get("free_slots") == body.get(
                    "num_slots"):
                idle = True
                break
            await asyncio.sleep(0.1)
    full = [w for w in windows if w.latencies]
    first, last = (full[0], full[-1]) if full else (Window(0), Window(0))
    result = {
        "duration_s": round(time.monotonic() - t_start, 1),
        "concurrency": args.concurrency,
        "completed": sum(w.completed for w in windows),
        "rejected": sum(w.rejected for w in windows),
        "disconnected": sum(w.disconnected for w in windows),
        "lost": sum(w.lost for w in windows),
        "idle_after": idle,
        "health_after": body,
        "rss_start_mb": round(rss_start, 1) if pid is not None else None,
        "rss_first_window_mb": round(first.rss_mb, 1) if pid is not None else None,
        "rss_last_window_mb": round(last.rss_mb, 1) if pid is not None else None,
        "rss_growth_mb": round(last.rss_mb - first.rss_mb, 1) if pid is not None else None,
        "p50_first_s": round(pct(first.latencies, 0.5), 4), "p50_last_s": round(pct(last.latencies, 0.5), 4),
        "p99_first_s": round(pct(first.latencies, 0.99), 4), "p99_last_s": round(pct(last.latencies, 0.99), 4),
        "p50_drift": round(pct(last.latencies, 0.5) / pct(first.latencies, 0.5), 3) if full else None,
        "p99_drift": round(pct(last.latencies, 0.99) / pct(first.latencies, 0.99), 3) if full else None,
        "windows": [{"t_s": round(w.start - t_start, 1), "completed": w.completed, "rejected": w.rejected,
                     "disconnected": w.disconnected, "lost": w.lost, "rss_mb": round(w.rss_mb, 1),
                     "p50_s": round(pct(w.latencies, 0.5), 4), "p99_s": round(pct(w.latencies, 0.99), 4),
                     "ttft_p50_s": round(pct(w.ttfts, 0.5), 4)} for w in windows],
    }
    return result


def report_window(k: int, w: Window) -> None:
    print(f"window {k:3d}: completed {w.completed:5d} rejected {w.rejected:4d} disconnected {w.disconnected:4d} "
          f"lost {w.lost:3d}  p50 {pct(w.latencies, 0.5):7.3f}s p99 {pct(w.latencies, 0.99):7.3f}s  "
          f"ttft p50 {pct(w.ttfts, 0.5):6.3f}s  rss {w.rss_mb:8.1f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="soak a running server at this URL (default: start one)")
    p.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS")
    p.add_argument("--tiny", action="store_true", help="start the server on a tiny random model (tests' helper)")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds per report window (default 60)")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (default 16)")
    p.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (default 32)")
    p.add_argument("--disconnect-ratio", type=float, default=0.1, help="share of streams left mid-way (default 0.1)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="client timeout per request (default 120)")
    p.add_argument("--model-name", help="model name to send (default: the first of /v1/models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the JSON result here")
    p.add_argument("serve_args", nargs="*", help="after --: arguments for `specserve serve`")
    args = p.parse_args(argv)

    proc = None
    pid = args.pid
    url = args.url
    tmp = None
    if url is None:
        serve_args = list(args.serve_args)
        if args.tiny:
            sys.path.insert(0, str(REPO))
            from tests.helpers.tiny_models import make_tiny_pair

            tmp = tempfile.TemporaryDirectory()
            target, _ = make_tiny_pair(Path(tmp.name))
            serve_args = ["--model", str(target), "--speculative-method", "ngram", "--served-model-name", "tiny",
                          "--dtype", "float32", "--max-num-seqs", "8", "--max-queue", "64", *serve_args]
        proc, url = start_server(serve_args)
        pid = proc.pid
        print(f"started server pid {pid} at {url}", flush=True)
    try:
        result = asyncio.run(soak(url, pid, args))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()
    summary = {k: v for k, v in result.items() if k != "windows"}
    print(json.dumps(summary, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    return 0 if result["lost"] == 0 and result["idle_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
