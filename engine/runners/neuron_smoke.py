"""`specserve neuron-smoke`: compile a tiny random Llama on a Neuron runner and compare it with the torch runner.

For a trn1/inf2 host (or the neuron Docker image run with --device=/dev/neuron0): it writes a 2-layer random model,
builds the chosen Neuron runner for it (float32, so the comparison is tight) with 4 slots and the torch runner, and runs
the same batches through both: two prompts, greedy decode with two slots live and two free, a verify pass at every
compiled K, a sit-out slot after a verify, a step with a single live slot, and with `--fused` the fused
draft+target graph (transformers-neuronx only) decoding greedily. It prints the library versions it ran against and a
pass/fail table. Exit status 0 when every check passes, 1 when one fails, 2 when no Neuron runner can run here.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

BACKENDS = ("neuron-tnx", "neuron-nxdi")
LIBRARIES = {"neuron-tnx": ("transformers_neuronx", "transformers-neuronx"),
             "neuron-nxdi": ("neuronx_distributed_inference", "neuronx-distributed-inference")}
SLOTS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                        help="Neuron runner to test (auto: the first whose library and device are present)")
    parser.add_argument("--tp-degree", type=int, default=1, help="NeuronCores to shard the tiny model over")
    parser.add_argument("--k", default="3", help="draft lengths compiled and verified, comma-separated (NxD "
                        "Inference compiles only the largest)")
    parser.add_argument("--fused", action="store_true",
                        help="also check fused speculation (neuron-tnx: FusedSpeculativeDecoder, greedy on device)")
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
                                   rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)  # peaked logits: greedy tokens are not decided by rounding
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def library_version(backend: str) -> str:
    """'<distribution> <version>' of the library the backend drives (module __version__ when not pip-installed)."""
    module, dist = LIBRARIES[backend]
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return f"{dist} {getattr(importlib.import_module(module), '__version__', 'unknown')}"


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


Row = tuple[str, float | None, bool]  # (check, max |logit diff| or None for token-only checks, tokens equal)


def _checks(neuron, ref, vocab: int, ks: list[int], tokens: int) -> list[Row]:
    from engine.runners.base import ForwardBatch

    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (11, 6)]
    rows: list[Row] = []

    def both(batch, name):
        got, want = neuron.execute(batch), ref.execute(batch)
        rows.append((name, float((got - want).abs().max()), bool((got.argmax(-1) == want.argmax(-1)).all())))
        return want

    want = both(ForwardBatch([0, 1], prompts, [0, 0], [1, 1]), "prefill (2 prompts)")
    seqs = [list(p) + [int(t)] for p, t in zip(prompts, want.argmax(-1), strict=True)]
    worst, same = 0.0, True
    for _ in range(tokens):
        batch = ForwardBatch([0, 1], [[s[-1]] for s in seqs], [len(s) - 1 for s in seqs], [1, 1])
        got, want = neuron.execute(batch), ref.execute(batch)
        worst = max(worst, float((got - want).abs().max()))
        same &= bool((got.argmax(-1) == want.argmax(-1)).all())
        for s, t in zip(seqs, want.argmax(-1), strict=True):
            s.append(int(t))
    rows.append((f"greedy decode ({tokens} steps, 2 live + {SLOTS - 2} free slots)", worst, same))
    # Verify at every compiled K: slot 0 carries its last token + K drafts, slot 1 sits out. Nothing is accepted
    # (the engine would roll back), so every K starts from the same history.
    for k in ks:
        drafts = torch.randint(0, vocab, (k,), generator=gen).tolist()
        both(ForwardBatch([0], [[seqs[0][-1], *drafts]], [len(seqs[0]) - 1], [k + 1]),
             f"verify K={k} (last token + {k} drafts)")
    # Slot 1 sat out every verify call: its next decode must still match (every live slot listed in every call).
    want = both(ForwardBatch([1], [[seqs[1][-1]]], [len(seqs[1]) - 1], [1]), "sit-out slot intact after verify")
    seqs[1].append(int(want.argmax(-1)[0]))
    # A step with one live slot: slot 0 released, slots 0, 2, 3 free (a free slot must not change the branch).
    neuron.release_slot(0)
    ref.release_slot(0)
    both(ForwardBatch([1], [[seqs[1][-1]]], [len(seqs[1]) - 1], [1]), f"decode with 1 live + {SLOTS - 1} free slots")
    return rows


def _fused_check(fused, ref, vocab: int, tokens: int) -> Row:
    """Greedy tokens from the fused runner (one-hot logits) against the torch runner's argmax, two slots free."""
    from engine.runners.base import ForwardBatch

    prompt = torch.randint(0, vocab, (9,), generator=torch.Generator().manual_seed(2)).tolist()
    seq, same = list(prompt), True
    b = ForwardBatch([0], [prompt], [0], [1])
    for _ in range(tokens + 1):
        got, want = fused.execute(b), ref.execute(b)
        same &= int(got.argmax()) == int(want.argmax())
        seq.append(int(want.argmax()))
        b = ForwardBatch([0], [[seq[-1]]], [len(seq) - 1], [1])
    return (f"fused greedy ({tokens} tokens, {fused.calls['decode']} device calls)", None, same)


def run(args: argparse.Namespace) -> int:
    from engine.runners.options import NeuronOptions
    from engine.runners.registry import RunnerSpec
    from engine.runners.torch_runner import TorchRunner

    backend, missing = _pick_backend(args.backend)
    if backend is None:
        print(f"specserve neuron-smoke: no Neuron runner can run here ({missing})", file=sys.stderr)
        return 2
    ks = sorted({int(k) for k in str(args.k).split(",") if k.strip()})
    if backend.name == "neuron-nxdi":
        ks = [max(ks)]  # one speculation_length per compiled model
    if args.fused and backend.name != "neuron-tnx":
        print("specserve neuron-smoke: --fused needs --backend neuron-tnx", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="specserve-smoke-") as tmp:
        model_dir = write_tiny_model(Path(args.workdir or tmp) / "tiny-llama")
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        base = NeuronOptions(tp_degree=args.tp_degree, compiled_dir=args.compiled_dir, k_values=tuple(ks),
                             context_buckets=(16, 64))
        spec = RunnerSpec(max_slots=SLOTS, max_model_len=args.max_len, dtype="float32", device="cpu", neuron=base)

        def torch_ref():
            return TorchRunner.from_pretrained(model_dir, max_slots=SLOTS, max_model_len=args.max_len,
                                               dtype="float32", device="cpu")

        t0 = time.monotonic()
        neuron = backend.build(str(model_dir), spec)
        compile_s = time.monotonic() - t0
        rows = _checks(neuron, torch_ref(), vocab, ks, args.tokens)
        if args.fused:  # the tiny model drafts for itself: every draft is accepted, k + 1 tokens per device call
            fused_spec = dataclasses.replace(spec, neuron=dataclasses.replace(
                base, fused_speculation=True, draft_model=str(model_dir)))
            rows.append(_fused_check(backend.build(str(model_dir), fused_spec), torch_ref(), vocab, args.tokens))
    ok_all = True
    print(f"neuron-smoke: backend {backend.name} ({library_version(backend.name)}), torch {torch.__version__}, "
          f"tp_degree {args.tp_degree}, K {','.join(map(str, ks))}, compile/load {compile_s:.1f}s, atol {args.atol}")
    print(f"{'check':<48} {'max |dlogit|':>12} {'tokens':>7}  result")
    for name, diff, same in rows:
        ok = (diff is None or diff <= args.atol) and same
        ok_all &= ok
        shown = "-" if diff is None else f"{diff:.2e}"
        print(f"{name:<48} {shown:>12} {'equal' if same else 'DIFFER':>7}  {'PASS' if ok else 'FAIL'}")
    print("PASS" if ok_all else "FAIL")
    return 0 if ok_all else 1
