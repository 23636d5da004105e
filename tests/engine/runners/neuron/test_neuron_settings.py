"""The `neuron` settings section: flags, env vars and YAML reach the Neuron runners as typed `NeuronOptions`."""

from __future__ import annotations

import pytest

from config.loader import ConfigError, load_settings
from engine.builder import neuron_options
from engine.runners.neuron_common import default_context_buckets, resolve_buckets
from engine.runners.options import NeuronOptions
from server.cli import main


def options(settings) -> NeuronOptions:
    return neuron_options(settings)


def test_env_and_cli_values_reach_the_runner_options(tmp_path):
    s = load_settings({"neuron_compiled_dir": str(tmp_path), "tp_degree": 8, "neuron_fused_speculation": True,
                       "model": "/models/target", "draft_model": "/models/draft"},
                      environ={"SPECSERVE_NEURON_K_VALUES": "4, 2", "SPECSERVE_NEURON_CONTEXT_BUCKETS": "512,128",
                               "SPECSERVE_NEURON_TOKEN_BUCKETS": "256"})
    o = options(s)
    assert (o.tp_degree, o.compiled_dir, o.k_values, o.context_buckets, o.token_buckets, o.fused_speculation) == (
        8, str(tmp_path), (2, 4), (128, 512), (256,), True)
    assert o.draft_model == "/models/draft"  # fused mode builds the draft inside the target runner


def test_k_values_default_to_num_speculative_tokens_and_vanish_without_speculation():
    assert options(load_settings({"num_speculative_tokens": 3}, environ={})).k_values == (3,)
    assert options(load_settings({"speculative_method": "none"}, environ={})).k_values == ()


@pytest.mark.parametrize("bad", [{"neuron_k_values": "0,2"}, {"neuron_context_buckets": "a,b"}, {"tp_degree": 0}])
def test_bad_values_are_readable_errors(bad):
    with pytest.raises(ConfigError):
        load_settings(bad, environ={})


def test_bucket_defaults_and_checks():
    assert default_context_buckets(2048) == (128, 256, 512, 1024, 2047)
    assert default_context_buckets(64) == (63,)
    assert resolve_buckets(NeuronOptions(), 512) == ((128, 256, 511), (512,))
    with pytest.raises(ValueError, match="below max_model_len"):
        resolve_buckets(NeuronOptions(context_buckets=(512,)), 512)
    with pytest.raises(ValueError, match="must equal max_model_len"):
        resolve_buckets(NeuronOptions(token_buckets=(128,)), 512)


def test_serve_help_lists_the_neuron_flags(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--tp-degree", "--neuron-compiled-dir", "--neuron-context-buckets", "--neuron-token-buckets",
                 "--neuron-k-values", "--neuron-fused-speculation"):
        assert flag in out
