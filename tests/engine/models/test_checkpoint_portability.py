"""A checkpoint written the way specserve writes them (config through `hf_compat.portable_config_dict`, as the GGUF
converter and tools/train_demo_pair.py do) gives the same logits under the installed transformers as under specserve's
own loader. CI's matrix (tools/ci_matrix.py) runs this under transformers 4.48, 4.51 and 4.57 as well as 5.x.

rope_theta is 100000 (SmolLM2's) or 500000 with llama3 scaling, never the 10000 default, so a reader that ignores
`rope_parameters` and falls back to 10000 shows up as a logits mismatch (the 5.x-only config is checked to do exactly
that under 4.x)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from engine.models.hf_compat import dtype_kwarg, portable_config_dict, transformers_version
from engine.models.loader import load_model
from engine.runners.base import ForwardBatch
from engine.runners.torch_runner import TorchRunner

VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, T = 96, 64, 96, 2, 4, 2, 40
HEAD_DIM = HIDDEN // HEADS
ROPES = {
    "default-100k": {"rope_type": "default", "rope_theta": 100000.0},
    "llama3-500k": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
}


def five_x_config(rope: dict) -> dict:
    """config.json as transformers 5 writes it: rope only as `rope_parameters`, dtype only as `dtype`."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
            "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "hidden_act": "silu",
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
            "attention_bias": False, "mlp_bias": False, "bos_token_id": 0, "eos_token_id": 1,
            "rope_parameters": dict(rope), "dtype": "float32"}


def weights() -> dict[str, torch.Tensor]:
    """Seeded Llama weights under HF names; peaked (std 0.08) so a rope error moves the logits visibly."""
    g = torch.Generator().manual_seed(21)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.08

    out = {"model.embed_tokens.weight": w(VOCAB, HIDDEN), "model.norm.weight": 1 + w(HIDDEN),
           "lm_head.weight": w(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": w(HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.k_proj.weight": w(KV_HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.v_proj.weight": w(KV_HEADS * HEAD_DIM, HIDDEN),
                p + "self_attn.o_proj.weight": w(HIDDEN, HEADS * HEAD_DIM),
                p + "mlp.gate_proj.weight": w(INTER, HIDDEN), p + "mlp.up_proj.weight": w(INTER, HIDDEN),
                p + "mlp.down_proj.weight": w(HIDDEN, INTER),
                p + "input_layernorm.weight": 1 + w(HIDDEN), p + "post_attention_layernorm.weight": 1 + w(HIDDEN)}
    return out


def write_checkpoint(d, cfg: dict):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(weights(), str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


IDS = torch.randint(2, VOCAB, (1, T), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def hf_logits(d) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(d), **dtype_kwarg(torch.float32)).eval()
    return model(IDS).logits[0].float()  # (T, vocab)


def specserve_logits(d) -> torch.Tensor:
    runner = TorchRunner(load_model(d, device="cpu"), max_slots=1, max_model_len=64)
    return runner.execute(ForwardBatch([0], [IDS[0].tolist()], [0], [T])).cpu()  # (T, vocab)


def hf_rope_theta(d) -> float:
    """The theta the installed transformers computes with (4.x keeps an unknown `rope_parameters` as a plain attribute
    and ignores it)."""
    cfg = transformers.AutoConfig.from_pretrained(str(d))
    if transformers_version() >= (5, 0):
        return float(cfg.rope_parameters["rope_theta"])
    return float(cfg.rope_theta)


@pytest.mark.parametrize("rope", list(ROPES))
def test_portable_checkpoint_same_logits_in_transformers_and_specserve(tmp_path, rope):
    d = write_checkpoint(tmp_path / rope, portable_config_dict(five_x_config(ROPES[rope])))
    assert hf_rope_theta(d) == ROPES[rope]["rope_theta"]
    ours = specserve_logits(d)
    assert ours.shape == (T, VOCAB)
    torch.testing.assert_close(hf_logits(d), ours, atol=1e-4, rtol=0)


def test_rope_theta_matters_here(tmp_path):
    """Guards the test above: with theta 10000 (the 4.x fallback) the same weights give other logits."""
    real = specserve_logits(write_checkpoint(tmp_path / "a", portable_config_dict(
        five_x_config(ROPES["default-100k"]))))
    fallback = specserve_logits(write_checkpoint(tmp_path / "b", portable_config_dict(
        five_x_config({"rope_type": "default", "rope_theta": 10000.0}))))
    assert (real - fallback).abs().max() > 1e-2


def test_five_x_only_config_is_what_portable_fixes(tmp_path):
    """Without the 4.x keys, transformers 4.x reads theta 10000 and its logits leave specserve's; 5.x reads it right."""
    d = write_checkpoint(tmp_path / "five", five_x_config(ROPES["default-100k"]))
    if transformers_version() >= (5, 0):
        assert hf_rope_theta(d) == 100000.0
        torch.testing.assert_close(hf_logits(d), specserve_logits(d), atol=1e-4, rtol=0)
    else:
        assert hf_rope_theta(d) == 10000.0
        assert (hf_logits(d) - specserve_logits(d)).abs().max() > 1e-2
