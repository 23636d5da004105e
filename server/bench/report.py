"""Bench output: the JSON document, a Markdown table and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any

SCHEMA = "specserve-bench/1"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def document(settings: dict[str, Any], runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": sys.argv, "machine": machine_info(), "settings": settings, "runs": runs, **extra}


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown_table(runs: list[dict[str, Any]]) -> str:
    head = ("| config | conc | rate | ok/err | req/s | out tok/s | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms "
            "| E2E p50/p90/p99 ms | accept | tok/pass |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in runs:
        m = r["metrics"]
        spec = m.get("speculation") or {}
        trip = lambda d: "/".join(_ms(d.get(f"p{p}")) for p in (50, 90, 99))  # noqa: E731
        lines.append(
            f"| {r.get('config', '-')} | {r.get('concurrency') or '-'} | {_num(r.get('request_rate'), '{:g}')} "
            f"| {m['completed']}/{m['errors']} | {_num(m['request_throughput'])} | {_num(m['output_throughput'], '{:.1f}')} "
            f"| {trip(m['ttft_s'])} | {trip(m['itl_s'])} | {trip(m['e2e_s'])} "
            f"| {_num(spec.get('acceptance_rate'))} | {_num(spec.get('mean_accepted_length'))} |")
    return "\n".join(lines) + "\n"


def plot_runs(runs: list[dict[str, Any]], out_prefix: str | Path, title: str = "") -> list[str]:
    """throughput-vs-concurrency and ITL-percentiles-vs-concurrency PNGs, one line per config. Returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_cfg: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.get("concurrency") and not r.get("request_rate"):
            by_cfg[r.get("config", "server")][r["concurrency"]].append(r["metrics"])
    if not by_cfg:
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for cfg, levels in by_cfg.items():  # median over repeats, bars span min..max
        xs = sorted(levels)
        ys = [[m["output_throughput"] or 0 for m in levels[x]] for x in xs]
        med = [median(y) for y in ys]
        ax.errorbar(xs, med, yerr=[[m - min(y) for m, y in zip(med, ys, strict=True)],
                                   [max(y) - m for m, y in zip(med, ys, strict=True)]],
                    marker="o", capsize=3, label=cfg)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tokens/s (median of repeats, bars: min-max)")
    ax.set_title(title or "throughput vs concurrency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    p = f"{out_prefix}_throughput.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {50: "-", 90: "--", 99: ":"}
    for i, (cfg, levels) in enumerate(by_cfg.items()):
        xs = sorted(levels)
        color = f"C{i}"
        for pct, ls in styles.items():
            ys = [median((m["itl_s"].get(f"p{pct}") or 0) * 1000 for m in levels[x]) for x in xs]
            ax.plot(xs, ys, ls, color=color, marker="o", markersize=3, label=f"{cfg} p{pct}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("inter-token latency, ms (per token)")
    ax.set_title(title or "ITL percentiles vs concurrency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    p = f"{out_prefix}_itl.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


if __name__ == "__main__":  # re-plot a saved run: python -m server.bench.report FILE.json [TITLE]
    doc = json.loads(Path(sys.argv[1]).read_text())
    for path in plot_runs(doc["runs"], Path(sys.argv[1]).with_suffix(""), sys.argv[2] if len(sys.argv) > 2 else ""):
        print(path)
