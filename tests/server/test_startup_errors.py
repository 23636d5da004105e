"""`specserve serve` mistakes a new user makes fail before the port is bound: one line on stderr naming the setting,
nothing on stdout, exit status 2, no "listening" (issue 17 items 1 and 6). Real subprocesses, as the user runs them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from config.loader import load_settings
from server.preflight import PreflightError, check_model_path, preflight

REPO = Path(__file__).resolve().parents[2]


def specserve(*args: str, timeout: float = 60) -> tuple[int, list[str], str, float]:
    """(exit status, stderr lines, stdout, seconds) of `specserve ARGS`."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return r.returncode, r.stderr.splitlines(), r.stdout, time.monotonic() - t0


def assert_one_line_exit_2(args: list[str], *needles: str, max_seconds: float = 30) -> str:
    rc, err, out, took = specserve(*args)
    assert rc == 2, (rc, err)
    assert len(err) == 1, err
    assert out == ""
    assert "listening" not in err[0] and "Traceback" not in err[0]
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    assert took < max_seconds
    return err[0]


def test_missing_model_directory(tmp_path):
    line = assert_one_line_exit_2(["serve", "--model", str(tmp_path / "nonexistent"), "--port", "0"],
                                  "--model", "no such file or directory", max_seconds=15)
    assert line.startswith("specserve serve: error: ")


def test_empty_model_directory_says_config_json(tmp_path):
    assert_one_line_exit_2(["serve", "--model", str(tmp_path), "--port", "0"], "--model", "no config.json")


def test_missing_draft_names_the_draft(tmp_path, tiny_pair):
    target, _ = tiny_pair
    line = assert_one_line_exit_2(["serve", "--model", str(target), "--draft-model", str(tmp_path / "nope"),
                                   "--port", "0"], "--draft-model")
    assert "--model " not in line.replace("--draft-model", "")


def test_neuron_backend_without_its_library():
    try:
        import transformers_neuronx  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("transformers-neuronx is installed here: the backend may well run")
    assert_one_line_exit_2(["serve", "--backend", "neuron-tnx", "--port", "0"], "--backend neuron-tnx",
                           "transformers-neuronx")


def test_invalid_choice_is_one_line_not_the_usage():
    assert_one_line_exit_2(["serve", "--dtype", "nonsense"], "specserve serve: error:", "--dtype", "nonsense")


def test_mistyped_serve_flag_is_reported_by_serve_with_a_suggestion():
    line = assert_one_line_exit_2(["serve", "--max-num-seqz", "3"], "specserve serve: error:", "--max-num-seqz",
                                  "did you mean --max-num-seqs?")
    assert "COMMAND" not in line  # not the top-level usage


def test_invalid_setting_value_is_one_line():
    assert_one_line_exit_2(["serve", "--max-num-seqs", "0"], "max_num_seqs")


def test_bind_failure_is_one_line(tmp_path, tiny_pair):
    import socket

    target, _ = tiny_pair
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_one_line_exit_2(["serve", "--model", str(target), "--speculative-method", "none", "--port", str(port)],
                               f"cannot bind 127.0.0.1:{port}")


# --- the checks themselves (no subprocess) ---------------------------------------------------------------------------

def test_gguf_file_and_hub_id_pass_other_files_do_not(tmp_path):
    gguf = tmp_path / "m.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    check_model_path("--model", str(gguf))
    check_model_path("--model", "HuggingFaceTB/SmolLM2-135M-Instruct")  # resolved while loading, not here
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(PreflightError, match="not a .gguf file"):
        check_model_path("--model", str(other))


def test_checkpoint_directory_passes(tiny_pair):
    target, draft = tiny_pair
    preflight(load_settings({"model": str(target), "draft_model": str(draft)}, environ={}))


def test_missing_tokenizer_path(tmp_path, tiny_pair):
    target, _ = tiny_pair
    with pytest.raises(PreflightError, match="^--tokenizer "):
        preflight(load_settings({"model": str(target), "tokenizer": str(tmp_path / "tok")}, environ={}))


def test_a_checkpoint_that_passes_the_checks_but_cannot_load_fails_behind_health(tmp_path):
    """The boundary: a directory with a config.json but no weights passes the pre-bind checks, so the server binds,
    answers /health 503 while loading, then exits 1 with the load error (orchestrators see the progress)."""
    from tests.server.server_proc import ServerProcess

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    proc = ServerProcess("--model", tmp_path, "--speculative-method", "none")
    proc.start(wait_ready=False)
    assert proc.proc.wait(120) == 1
    assert any("listening on" in x for x in proc.lines), proc.output()
    assert any("model loading failed" in x for x in proc.lines), proc.output()
