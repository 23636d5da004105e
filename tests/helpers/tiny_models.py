"""Tiny random-init model directories in Hugging Face format, built from a config with a fixed seed.

Used wherever a test needs a real checkpoint directory (tokenizer + config + safetensors) but no trained weights:
engine end-to-end tests, server tests, bench tests. Building one takes about a second.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i, i * i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "The quick brown fox jumps over the lazy dog. Héllo wörld, naïve café — 日本語のテキスト 🙂.\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
    "Stop words: STOP, END, halt. Numbers 0123456789. Symbols !@#$%^&*()[]{}<>?\n",
]


def build_tokenizer(out_dir: Path, vocab_size: int = 384) -> None:
    """Byte-level BPE over a small corpus; saved with a chat template and BOS/EOS so AutoTokenizer loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def build_llama(out_dir: Path, vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int = 2, intermediate: int = 128, seed: int = 0, max_pos: int = 512,
                tie: bool = False, arch: str = "llama", init_from: Path | None = None) -> None:
    """Random-init Llama-family model saved with save_pretrained (config.json + model.safetensors).

    `init_from`: copy the first `layers` layers, embeddings and head from another tiny model so the two agree often
    (a draft built to match a target).
    """
    import transformers

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
        tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1, pad_token_id=2, rms_norm_eps=1e-5,
    )
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    cfg = cfg_cls(**common)
    model = model_cls(cfg)
    with torch.no_grad():
        for p in model.parameters():  # larger-than-default init so random logits are peaked, not flat
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    if init_from is not None:
        src = model_cls.from_pretrained(str(init_from))
        state = {k: v for k, v in src.state_dict().items() if not k.startswith("model.layers.")
                 or int(k.split(".")[2]) < layers}
        model.load_state_dict(state, strict=False)
    model.save_pretrained(str(out_dir), safe_serialization=True)


def make_tiny_pair(root: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Target (2 layers) and a draft (1 layer copied from the target) sharing one tokenizer. Returns their dirs."""
    target, draft = root / "target", root / "draft"
    for d in (target, draft):
        d.mkdir(parents=True, exist_ok=True)
        build_tokenizer(d)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(target)))
    build_llama(target, vocab, layers=2, seed=seed)
    build_llama(draft, vocab, layers=1, seed=seed + 1, init_from=target)
    return target, draft
