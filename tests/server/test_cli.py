"""`specserve` CLI: flags generated from the settings, only given flags reach load_settings, lazy subcommands."""

from __future__ import annotations

import argparse

import pytest

from config.loader import load_settings
from config.settings import SECTIONS
from server import cli, serve_cmd


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    serve_cmd.add_arguments(parser)
    return parser


def given(argv: list[str]) -> dict:
    ns = serve_parser().parse_args(argv)
    return {k: v for k, v in vars(ns).items() if k != "config"}


def test_every_settings_field_has_a_flag_with_its_description():
    help_text = serve_parser().format_help()
    for cls in SECTIONS.values():
        for name, field in cls.model_fields.items():
            assert "--" + name.replace("_", "-") in help_text
            assert field.description.split()[0] in help_text


def test_contract_flags_exist():
    for flag in ("--model", "--draft-model", "--speculative-method", "--num-speculative-tokens", "--backend",
                 "--max-num-seqs", "--max-queue", "--max-num-batched-tokens", "--max-model-len", "--host", "--port",
                 "--api-key", "--config", "--served-model-name", "--dtype", "--device", "--drain-timeout",
                 "--log-prompts", "--speculative-policy"):
        assert flag in serve_parser().format_help()


def test_only_given_flags_are_passed():
    assert given([]) == {}
    assert given(["--max-num-seqs", "3", "--log-prompts", "--drain-timeout", "2.5", "--backend", "torch"]) == {
        "max_num_seqs": 3, "log_prompts": True, "drain_timeout": 2.5, "backend": "torch"}
    assert given(["--no-log-prompts"]) == {"log_prompts": False}


def test_list_settings_take_comma_separated_values():
    g = given(["--neuron-context-buckets", "512,128"]) if "neuron" in SECTIONS else {}
    if g:
        assert load_settings(g, environ={}).neuron.neuron_context_buckets == [128, 512]


def test_choices_are_enforced():
    with pytest.raises(SystemExit) as e:
        serve_parser().parse_args(["--speculative-method", "magic"])
    assert e.value.code == 2


def test_precedence_cli_over_env_over_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: 1111\nmax_num_seqs: 2\nmax_queue: 5\n")
    env = {"SPECSERVE_MAX_NUM_SEQS": "3", "SPECSERVE_PORT": "2222"}
    s = load_settings(given(["--port", "3333"]), cfg, environ=env)
    assert (s.server.port, s.engine.max_num_seqs, s.engine.max_queue) == (3333, 3, 5)


def test_unknown_subcommand_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2


def test_optional_subcommand_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "bench", ("specserve_not_installed_mod", "load generator"))
    assert cli.main(["bench"]) == 2
    assert "not available" in capsys.readouterr().err


def test_subcommands_are_imported_lazily(monkeypatch):
    imported = []
    real = cli.importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: imported.append(name) or real(name))
    monkeypatch.setitem(cli.SUBCOMMANDS, "bench", ("specserve_not_installed_mod", "load generator"))
    cli.build_parser(["serve"])
    assert imported == ["server.serve_cmd"]


def test_config_error_is_one_line_exit_2(capsys):
    assert cli.main(["serve", "--num-speculative-tokens", "99"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_speculative_tokens" in err
