"""engine.models.hf_compat: the from_pretrained dtype keyword by transformers version, and config dicts that carry both
the 4.x (`rope_theta`, `rope_scaling`, `torch_dtype`) and the 5.x (`rope_parameters`, `dtype`) spellings."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from engine.models import hf_compat
from engine.models.config import ModelConfig
from engine.models.hf_compat import dtype_kwarg, make_config_portable, portable_config_dict

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}


@pytest.mark.parametrize(("version", "key"), [
    ("4.47.1", "torch_dtype"), ("4.48.3", "torch_dtype"), ("4.51.3", "torch_dtype"), ("4.55.4", "torch_dtype"),
    ("4.56.0", "dtype"), ("4.57.6", "dtype"), ("5.0.0rc1", "dtype"), ("5.24.0", "dtype"), ("4.56.0.dev0", "dtype"),
])
def test_dtype_keyword_by_version(version, key):
    assert dtype_kwarg(torch.bfloat16, version=version) == {key: torch.bfloat16}


def test_version_parsing():
    assert hf_compat.transformers_version("4.56.0.dev0") == (4, 56)
    assert hf_compat.transformers_version("5.0.0rc1") == (5, 0)
    assert hf_compat.transformers_version() == hf_compat.transformers_version(transformers.__version__)


def test_dtype_keyword_is_understood_by_the_installed_transformers(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), **dtype_kwarg(torch.bfloat16))
    assert next(model.parameters()).dtype == torch.bfloat16
    model.config.to_json_string()  # the 4.48 failure was here: a torch.dtype in the config is not JSON


def test_five_x_default_rope_gets_four_x_keys():
    out = portable_config_dict({"rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "dtype": "bfloat16"})
    assert out["rope_theta"] == 100000.0 and out["rope_scaling"] is None
    assert out["rope_parameters"] == {"rope_type": "default", "rope_theta": 100000.0}
    assert out["dtype"] == out["torch_dtype"] == "bfloat16"


def test_five_x_scaled_rope_gets_rope_scaling():
    out = portable_config_dict({"rope_parameters": {**LLAMA3, "rope_theta": 500000.0}})
    assert out["rope_theta"] == 500000.0
    assert out["rope_scaling"] == LLAMA3
    assert "torch_dtype" not in out and "dtype" not in out  # nothing invented


def test_four_x_config_gets_rope_parameters():
    out = portable_config_dict({"rope_theta": 100000.0, "rope_scaling": LLAMA3, "torch_dtype": torch.float16})
    assert out["rope_parameters"] == {**LLAMA3, "rope_theta": 100000.0}
    assert out["rope_scaling"] == LLAMA3 and out["rope_theta"] == 100000.0
    assert out["dtype"] == out["torch_dtype"] == "float16"  # a torch.dtype becomes its JSON name


def test_legacy_type_key_and_missing_theta():
    out = portable_config_dict({"rope_scaling": {"type": "linear", "factor": 2.0}})
    assert out["rope_parameters"] == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert out["rope_theta"] == 10000.0


def test_rope_parameters_win_over_a_stale_top_level_theta():
    out = portable_config_dict({"rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    assert out["rope_theta"] == 1e6


@pytest.mark.parametrize("cfg", [
    {"rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "dtype": "bfloat16"},
    {"rope_parameters": {**LLAMA3, "rope_theta": 500000.0}},
    {"rope_theta": 50000.0, "rope_scaling": LLAMA3, "torch_dtype": "float32"},
    {},
])
def test_idempotent_and_specserve_reads_the_same_rope(cfg):
    once = portable_config_dict(cfg)
    assert portable_config_dict(once) == once
    base = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                model_type="llama")
    ours = ModelConfig.from_dict({**base, **cfg})
    assert ModelConfig.from_dict({**base, **once}) == ours
    # Each spelling alone still says the same: what a 4.x reader and what a 5.x reader get.
    four = {k: v for k, v in once.items() if k != "rope_parameters"}
    five = {k: v for k, v in once.items() if k not in ("rope_theta", "rope_scaling")}
    for half in (four, five):
        got = ModelConfig.from_dict({**base, **half})
        assert (got.rope_theta, got.rope_scaling) == (ours.rope_theta, ours.rope_scaling)


def test_input_is_not_mutated():
    cfg = {"rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}}
    snapshot = json.dumps(cfg)
    portable_config_dict(cfg)
    assert json.dumps(cfg) == snapshot


def test_make_config_portable_rewrites_in_place(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16",
                                                      "rope_parameters": {"rope_type": "default", "rope_theta": 1e5}}))
    got = make_config_portable(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert json.loads(text) == got and got["rope_theta"] == 1e5 and got["torch_dtype"] == "bfloat16"
    make_config_portable(tmp_path)
    assert (tmp_path / "config.json").read_text() == text
