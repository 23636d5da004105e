"""`specserve bench --seed`: unseeded by default, so a sampled run measures the adaptive policy rather than seeded
requests pinned at K_max; asking for seeds with --temperature > 0 says what that measures."""

from __future__ import annotations

import argparse

from bench.cli import add_arguments, request_spec
from bench.loadgen import request_body


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_requests_are_unseeded_by_default(capsys):
    args = parse("--temperature", "0.8")
    spec = request_spec(args, "m")
    _, body = request_body({"prompt": "x"}, spec, 3)
    assert args.seed is None and "seed" not in body
    assert "warning" not in capsys.readouterr().err


def test_a_seeded_sampled_run_warns_that_adaptive_k_is_pinned(capsys):
    spec = request_spec(parse("--temperature", "0.8", "--seed", "5"), "m")
    _, body = request_body({"prompt": "x"}, spec, 3)
    assert body["seed"] == 8
    err = capsys.readouterr().err
    assert "warning" in err and "K_max" in err and "adaptive" in err


def test_a_seeded_greedy_run_does_not_warn(capsys):
    request_spec(parse("--temperature", "0", "--seed", "5"), "m")
    assert "warning" not in capsys.readouterr().err
