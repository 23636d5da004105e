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


# (file suffix, y label, value of one run's metrics, log y): one PNG each, x = concurrency, one line per config.
# Percentile plots draw p50 solid, p90 dashed, p99 dotted in the config's colour.
PERCENTILES = {50: "-", 90: "--", 99: ":"}


def _spec(m: dict[str, Any], key: str) -> float | None:
    return (m.get("speculation") or {}).get(key)


PLOTS: list[tuple[str, str, Any, bool]] = [
    ("throughput", "output tokens/s", lambda m: m.get("output_throughput"), False),
    ("ttft", "time to first token, ms", lambda m, p: _ms_or_none(m["ttft_s"].get(f"p{p}")), True),
    ("itl", "inter-token latency, ms (per token)", lambda m, p: _ms_or_none(m["itl_s"].get(f"p{p}")), True),
    ("acceptance", "draft acceptance rate (accepted / proposed)", lambda m: _spec(m, "acceptance_rate"), False),
    ("tokens_per_pass", "tokens per target pass", lambda m: _spec(m, "mean_accepted_length"), False),
]


def _ms_or_none(x: float | None) -> float | None:
    return None if x is None else x * 1000


def _by_config(runs: list[dict[str, Any]]) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """config -> concurrency -> metrics of each repeat (concurrency sweeps only; Poisson runs have no x)."""
    by_cfg: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.get("concurrency") and not r.get("request_rate"):
            by_cfg[r.get("config", "server")][r["concurrency"]].append(r["metrics"])
    return by_cfg


def _plain_axes(ax: Any, levels: list[int], log_y: bool) -> None:
    """x: a log2 axis with a tick at each measured concurrency, labelled 1, 4, 16 (not 2^0 and ticks without a
    point); y on a log scale labelled 5, 20, 100 (not 2x10^1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_locator(NullLocator())
    if len(levels) == 1:  # one point: give it some room instead of a degenerate axis
        ax.set_xlim(levels[0] / 2, levels[0] * 2)
    if log_y:  # majors at 1-2-5 of each decade, so a range under one decade still has labelled ticks
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("concurrency (requests in flight)")
    ax.grid(alpha=0.3, which="major")


def plot_figures(runs: list[dict[str, Any]], title: str = "") -> dict[str, Any]:
    """suffix -> matplotlib Figure for each plot that has data. The caller saves and closes them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_cfg = _by_config(runs)
    levels = sorted({c for lv in by_cfg.values() for c in lv})
    if not levels:
        return {}
    repeats = max(len(ms) for lv in by_cfg.values() for ms in lv.values())
    figs = {}
    for suffix, ylabel, value, pct in PLOTS:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = False
        for i, (cfg, lv) in enumerate(by_cfg.items()):
            xs = sorted(lv)
            color = f"C{i}"
            if pct:
                for p, ls in PERCENTILES.items():
                    pts = [(x, median(v)) for x in xs if (v := [y for m in lv[x] if (y := value(m, p)) is not None])]
                    if pts:
                        ax.plot(*zip(*pts, strict=True), ls, color=color, marker="o", markersize=3,
                                label=f"{cfg} p{p}")
                        drawn = True
                continue
            pts = [(x, [y for m in lv[x] if (y := value(m)) is not None]) for x in xs]
            pts = [(x, ys) for x, ys in pts if ys]
            if not pts:
                continue
            x, ys = [p[0] for p in pts], [p[1] for p in pts]
            med = [median(y) for y in ys]
            if repeats > 1:  # bars only when there is a spread to show
                ax.errorbar(x, med, yerr=[[m - min(y) for m, y in zip(med, ys, strict=True)],
                                          [max(y) - m for m, y in zip(med, ys, strict=True)]],
                            marker="o", capsize=3, color=color, label=cfg)
            else:
                ax.plot(x, med, marker="o", color=color, label=cfg)
            drawn = True
        if not drawn:  # e.g. no speculation figures from this server
            plt.close(fig)
            continue
        _plain_axes(ax, levels, log_y=pct)
        note = f" (median of {repeats} repeats, bars: min-max)" if repeats > 1 and not pct else ""
        ax.set_ylabel(ylabel + note)
        if suffix in ("acceptance",):
            ax.set_ylim(0, 1.05)
        ax.set_title(title or f"{suffix.replace('_', ' ')} vs concurrency")
        ax.legend(fontsize=6 if pct else 8, ncol=2 if pct else 1)
        fig.tight_layout()
        figs[suffix] = fig
    return figs


def plot_runs(runs: list[dict[str, Any]], out_prefix: str | Path, title: str = "") -> list[str]:
    """One PNG per plot with data (throughput, TTFT, ITL, acceptance rate, tokens per pass) against concurrency,
    one line per config: `{out_prefix}_{suffix}.png`. Returns the paths."""
    figs = plot_figures(runs, title)  # first: it selects the Agg backend before pyplot is imported
    import matplotlib.pyplot as plt

    paths = []
    for suffix, fig in figs.items():
        p = f"{out_prefix}_{suffix}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


if __name__ == "__main__":  # re-plot a saved run: python -m bench.report FILE.json [TITLE]
    doc = json.loads(Path(sys.argv[1]).read_text())
    for path in plot_runs(doc["runs"], Path(sys.argv[1]).with_suffix(""), sys.argv[2] if len(sys.argv) > 2 else ""):
        print(path)
