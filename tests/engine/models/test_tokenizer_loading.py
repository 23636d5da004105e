"""engine.models.tokenizer: a checkpoint directory with config and weights but no tokenizer files gets a clear
"no tokenizer files in DIR" error under every transformers version (4.57 used to end in a protobuf ImportError because
AutoConfig's name fallback matched "mpt" inside "empty"); unreadable tokenizer files are named with the version."""

from __future__ import annotations

import shutil

import pytest
import transformers

from engine.models.tokenizer import TokenizerLoadError, TokenizerNotFoundError, load_tokenizer
from tests.helpers.tiny_models import build_llama, build_tokenizer


@pytest.fixture(scope="module")
def model_only(tmp_path_factory):
    """config.json + model.safetensors, no tokenizer; the directory name contains "mpt" as 4.57's fallback saw it."""
    d = tmp_path_factory.mktemp("models") / "empty"
    build_llama(d, vocab_size=64, hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32)
    assert {p.name for p in d.iterdir()} >= {"config.json", "model.safetensors"}
    return d


def test_no_tokenizer_files_is_named(model_only):
    with pytest.raises(TokenizerNotFoundError, match="no tokenizer files in .*empty") as e:
        load_tokenizer(model_only)
    assert isinstance(e.value, FileNotFoundError)  # the builder's "draft shares the target's tokenizer" path


def test_broken_tokenizer_file_names_dir_and_version(model_only, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(model_only, d)
    (d / "tokenizer.json").write_text("{ not json")
    with pytest.raises(TokenizerLoadError, match=f"in {d} with transformers {transformers.__version__}"):
        load_tokenizer(d)


def test_a_real_tokenizer_loads(model_only, tmp_path):
    d = tmp_path / "ok"
    shutil.copytree(model_only, d)
    build_tokenizer(d, vocab_size=300)
    tok = load_tokenizer(d)
    assert tok.decode(tok.encode("def add(a, b):", add_special_tokens=False)) == "def add(a, b):"
