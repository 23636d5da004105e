"""`specserve neuron-smoke`: compile a tiny random Llama on a Neuron runner and compare it with the torch runner.

For a trn1/inf2 host (or the neuron Docker image run with --device=/dev/neuron0): it writes a 2-layer random model,
builds the chosen Neuron runner for it (float32, so the comparison is tight) and the torch runner, runs the same
batches through both — two prompts, greedy decoding with both slots live, a verify pass with K drafts — and prints a
pass/fail table. Exit status 0 when every check passes, 1 when one fails, 2 when no Neuron runner can run here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

BACKENDS = ("neuron-tnx", "neuron-nxdi")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="Neuron runner to test (auto: the first whose library and device are present)")
    parser.add_argument("--tp-degree", type=int, default=1, help="NeuronCores to shard the tiny model over")
    parser.add_argument("--k", type=int, default=3, help="draft tokens in the verify check (compiled as K)")
    parser.add_argument("--tokens", type=int, default=12, help="greedy tokens to generate per prompt")
    parser.add_argument("--max-len", type=int, default=128, help="positions per slot")
    parser.add_argument("--atol", type=float, default=1e-2, help="largest allowed |logit difference|")
    parser.add_argument("--compiled-dir", default=None, help="reuse/save compiled graphs here")
    parser.add_argument("--workdir", default=None, help="where to write the tiny model (default: a temp dir)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """For CLIs that hand out subparsers: register `neuron-smoke`."""
    p = subparsers.add_parser("neuron-smoke", help=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(_run=run)
    return p


def write_tiny_model(directory: Path, *, vocab: int = 512, seed: int = 0) -> Path:
    """A random 2-layer Llama in Hugging Face format (config.json + model.safetensors); no tokenizer needed."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)  # peaked logits: greedy tokens are not decided by rounding
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def _pick_backend(name: str):
    from engine.runners.registry import BACKENDS as REGISTERED
    from engine.runners.registry import _load_optional

    _load_optional()
    names = BACKENDS if name == "auto" else (name,)
    missing = []
    for n in names:
        b = REGISTERED.get(n)
        why = "not registered" if b is None else b.available()
        if why is None:
            return b, None
        missing.append(f"{n}: {why}")
    return None, "; ".join(missing)


def _checks(neuron, ref, vocab: int, k: int, tokens: int) -> list[tuple[str, float, bool | None]]:
    """(check, max |logit diff|, tokens equal or None) rows."""
    from engine.runners.base import ForwardBatch

    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (11, 6)]
    rows = []

    def both(batch):
        return neuron.execute(batch), ref.execute(batch)

    got, want = both(ForwardBatch([0, 1], prompts, [0, 0], [1, 1]))
    rows.append(("prefill (2 prompts)", float((got - want).abs().max()), bool((got.argmax(-1) == want.argmax(-1)).all())))
    seqs = [list(p) + [int(t)] for p, t in zip(prompts, want.argmax(-1), strict=True)]
    worst, same = 0.0, True
    for _ in range(tokens):
        batch = ForwardBatch([0, 1], [[s[-1]] for s in seqs], [len(s) - 1 for s in seqs], [1, 1])
        got, want = both(batch)
        worst = max(worst, float((got - want).abs().max()))
        same &= bool((got.argmax(-1) == want.argmax(-1)).all())
        for s, t in zip(seqs, want.argmax(-1), strict=True):
            s.append(int(t))
    rows.append((f"greedy decode ({tokens} steps x 2 slots)", worst, same))
    # Verify: slot 0 carries its last token + K drafts (half of them the torch runner's own continuation), slot 1 idle.
    drafts = torch.randint(0, vocab, (k,), generator=gen).tolist()
    batch = ForwardBatch([0], [[seqs[0][-1], *drafts]], [len(seqs[0]) - 1], [k + 1])
    got, want = both(batch)
    rows.append((f"verify (last token + {k} drafts)", float((got - want).abs().max()),
                 bool((got.argmax(-1) == want.argmax(-1)).all())))
    # Slot 1 sat out the verify call: its next decode must still match (every slot listed in every call).
    batch = ForwardBatch([1], [[seqs[1][-1]]], [len(seqs[1]) - 1], [1])
    got, want = both(batch)
    rows.append(("idle slot intact after verify", float((got - want).abs().max()),
                 bool((got.argmax(-1) == want.argmax(-1)).all())))
    return rows


def run(args: argparse.Namespace) -> int:
    from engine.runners.registry import RunnerSpec
    from engine.runners.torch_runner import TorchRunner

    backend, missing = _pick_backend(args.backend)
    if backend is None:
        print(f"specserve neuron-smoke: no Neuron runner can run here ({missing})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="specserve-smoke-") as tmp:
        model_dir = write_tiny_model(Path(args.workdir or tmp) / "tiny-llama")
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        extra = (("tp_degree", args.tp_degree), ("compiled_dir", args.compiled_dir), ("k_values", (args.k,)),
                 ("context_buckets", (16, 64)))
        spec = RunnerSpec(max_slots=2, max_model_len=args.max_len, dtype="float32", device="cpu", extra=extra)
        t0 = time.monotonic()
        neuron = backend.build(str(model_dir), spec)
        compile_s = time.monotonic() - t0
        ref = TorchRunner.from_pretrained(model_dir, max_slots=2, max_model_len=args.max_len, dtype="float32",
                                          device="cpu")
        rows = _checks(neuron, ref, vocab, args.k, args.tokens)
    ok_all = True
    print(f"neuron-smoke: backend {backend.name}, tp_degree {args.tp_degree}, K {args.k}, "
          f"compile/load {compile_s:.1f}s, atol {args.atol}")
    print(f"{'check':<40} {'max |dlogit|':>12} {'tokens':>7}  result")
    for name, diff, same in rows:
        ok = diff <= args.atol and same is not False
        ok_all &= ok
        print(f"{name:<40} {diff:>12.2e} {'equal' if same else 'DIFFER':>7}  {'PASS' if ok else 'FAIL'}")
    print("PASS" if ok_all else "FAIL")
    return 0 if ok_all else 1
