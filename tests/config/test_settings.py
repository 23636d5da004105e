"""Settings precedence (CLI > env > YAML > defaults) and readable errors."""

from __future__ import annotations

import pytest

from config.loader import ConfigError, load_settings


def test_defaults():
    s = load_settings({}, environ={})
    assert s.engine.max_num_seqs == 8 and s.speculation.num_speculative_tokens == 4
    assert s.resolved_method == "hybrid"  # no --model: the default pair, which has a draft


def test_auto_method_follows_the_models_and_backend(tmp_path):
    """auto: hybrid with a draft on torch, the draft proposer on Neuron (fused speculation is built around it),
    n-gram without a draft, none at K = 0; an explicit method is kept."""
    (tmp_path / "t").mkdir()
    (tmp_path / "d").mkdir()
    pair = {"model": str(tmp_path / "t"), "draft_model": str(tmp_path / "d")}
    assert load_settings(pair, environ={}).resolved_method == "hybrid"
    assert load_settings({**pair, "backend": "neuron-tnx"}, environ={}).resolved_method == "draft"
    assert load_settings({**pair, "speculative_method": "draft"}, environ={}).resolved_method == "draft"
    assert load_settings({"model": str(tmp_path / "t")}, environ={}).resolved_method == "ngram"
    assert load_settings({**pair, "num_speculative_tokens": 0}, environ={}).resolved_method == "none"


def test_precedence_cli_over_env_over_yaml_over_default(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_num_seqs: 3\nmax_queue: 5\nengine:\n  max_num_batched_tokens: 99\nport: 1234\n")
    env = {"SPECSERVE_MAX_QUEUE": "6", "SPECSERVE_PORT": "4321"}
    s = load_settings({"port": 9999}, config_file=cfg, environ=env)
    assert s.engine.max_num_seqs == 3  # YAML over default
    assert s.engine.max_queue == 6  # env over YAML
    assert s.server.port == 9999  # CLI over env
    assert s.engine.max_num_batched_tokens == 99  # sectioned YAML


def test_env_values_are_parsed():
    s = load_settings({}, environ={"SPECSERVE_LOG_PROMPTS": "true", "SPECSERVE_DRAIN_TIMEOUT": "2.5"})
    assert s.server.log_prompts is True and s.server.drain_timeout == 2.5


@pytest.mark.parametrize(
    "cli, needle",
    [
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"speculative_method": "magic"}, "speculative_method"),
        ({"model": "m", "speculative_method": "draft"}, "needs --draft-model"),
        ({"draft_model": "d", "speculative_method": "none"}, "drop one of them"),
        ({"ngram_min": 5, "ngram_max": 2}, "ngram_min"),
        ({"no_such_flag": 1}, "unknown setting"),
    ],
)
def test_readable_errors(cli, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings(cli, environ={})


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_num_seqs: [\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_settings({}, config_file=bad, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings({}, config_file=tmp_path / "missing.yaml", environ={})
