"""`specserve bench compare` summary: per level, which configuration won and the adaptive ratio against it."""

from __future__ import annotations

from bench.compare import level_winners, winner_lines


def run(config: str, c: int, tput: float) -> dict:
    return {"config": config, "concurrency": c, "request_rate": None, "metrics": {"output_throughput": tput}}


def test_winner_and_adaptive_ratio_per_level():
    runs = [run("k0", 1, 100), run("static-draft", 1, 150), run("adaptive", 1, 147),
            run("k0", 1, 110), run("static-draft", 1, 140), run("adaptive", 1, 143),
            run("k0", 16, 900), run("static-draft", 16, 500), run("adaptive", 16, 950),  # adaptive wins one repeat
            run("k0", 16, 1000), run("static-draft", 16, 520), run("adaptive", 16, 940)]
    w = level_winners(runs)
    assert [x["winner"] for x in w] == ["static-draft", "k0"]
    r1 = w[0]["adaptive"]["adaptive"]
    assert r1["against"] == "static-draft" and abs(r1["ratio"] - 145 / 145) < 1e-9
    assert abs(r1["min"] - 147 / 150) < 1e-9 and abs(r1["max"] - 143 / 140) < 1e-9 and r1["repeats"] == 2
    r16 = w[1]["adaptive"]["adaptive"]
    assert r16["against"] == "k0" and abs(r16["ratio"] - 945 / 950) < 1e-9
    lines = winner_lines(w)
    assert lines[0].startswith("- c=1: winner static-draft (145.0 tok/s); adaptive/static-draft = 1.000 [0.980..1.021")
    assert lines[1].startswith("- c=16: winner k0 (950.0 tok/s); adaptive/k0 = 0.995")
