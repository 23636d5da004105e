"""Bench plots a reader can read (issue 17 item 7): plain tick labels (16, not 2^4; 20, not 2x10^1), an x tick at
every measured concurrency and nowhere else, error bars only with repeats, and TTFT, acceptance-rate and
tokens-per-pass plots beside throughput and ITL."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from bench.report import plot_figures, plot_runs  # noqa: E402
from bench.stats import RequestResult, summarize  # noqa: E402

LEVELS = (1, 4, 16)


def metrics(throughput: float, itl_ms: float, spec: bool = True) -> dict:
    m = summarize([RequestResult(ok=True, start=0.0, chunk_times=[0.1, 0.2], chunk_chars=[1, 1],
                                 completion_tokens=2, e2e=0.2)], duration=1.0)
    m["output_throughput"] = throughput
    m["itl_s"] = {"p50": itl_ms / 1000, "p90": 2 * itl_ms / 1000, "p99": 3 * itl_ms / 1000, "mean": itl_ms / 1000}
    m["ttft_s"] = {"p50": 0.05, "p90": 0.08, "p99": 0.2, "mean": 0.06}
    m["speculation"] = {"acceptance_rate": 0.7, "mean_accepted_length": 2.5} if spec else None
    return m


def runs(repeats: int = 1, spec: bool = True) -> list[dict]:
    return [{"config": cfg, "concurrency": c, "request_rate": None, "metrics": metrics(100.0 * c + r, 20.0 + c, spec)}
            for cfg in ("adaptive", "k0") for c in LEVELS for r in range(repeats)]


@pytest.fixture()
def figures():
    opened = []

    def make(rs):
        figs = plot_figures(rs)
        opened.extend(figs.values())
        for f in figs.values():
            f.canvas.draw()  # tick labels are formatted at draw time
        return figs

    yield make
    for f in opened:
        plt.close(f)


def labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_all_five_plots_and_plain_ticks(figures):
    figs = figures(runs())
    assert list(figs) == ["throughput", "ttft", "itl", "acceptance", "tokens_per_pass"]
    for name, fig in figs.items():
        (ax,) = fig.axes
        assert list(ax.get_xticks()) == list(LEVELS), name  # a tick at each point, none elsewhere
        assert labels(ax.xaxis) == ["1", "4", "16"], name
        for text in labels(ax.xaxis) + labels(ax.yaxis):
            assert "^" not in text and "times" not in text and "10^" not in text, (name, text)
        assert not [t for t in ax.xaxis.get_minorticklabels() if t.get_text()], name
    itl_y = labels(figs["itl"].axes[0].yaxis)
    assert len(itl_y) >= 2 and all(t.replace(".", "").isdigit() for t in itl_y), itl_y  # 20-100 ms: 20, 50, 100
    assert not [t for t in figs["itl"].axes[0].yaxis.get_minorticklabels() if t.get_text()]


def test_bars_only_with_repeats(figures):
    ax = figures(runs(repeats=1))["throughput"].axes[0]
    assert "bars" not in ax.get_ylabel() and not ax.containers  # no errorbar containers
    ax = figures(runs(repeats=3))["throughput"].axes[0]
    assert "median of 3 repeats, bars: min-max" in ax.get_ylabel() and ax.containers


def test_speculation_plots_skipped_without_speculation_figures(figures):
    assert list(figures(runs(spec=False))) == ["throughput", "ttft", "itl"]


def test_plot_runs_writes_one_png_per_plot(tmp_path):
    paths = plot_runs(runs(), tmp_path / "x")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["x_throughput.png", "x_ttft.png", "x_itl.png", "x_acceptance.png",
                                                    "x_tokens_per_pass.png"]
    assert all((tmp_path / p.rsplit("/", 1)[1]).stat().st_size > 1000 for p in paths)
