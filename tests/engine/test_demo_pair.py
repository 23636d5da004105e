"""The bundled demo pair (engine/demo_pair): loads with transformers and with the project's loader, both loaders agree
on greedy continuations, the chat template renders, the files are small and half precision, and a non-editable install
ships them."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import demo_pair
from engine.demo_pair import DEMO_DIR, SERVED_NAME, draft_dir, target_dir

REPO = Path(__file__).resolve().parents[2]
PROMPT = "import os\n\n\ndef read_lines(path):\n    \"\"\"Return the lines of a file.\"\"\"\n"
N_NEW = 12
MAX_BYTES = 25 * 1000 * 1000


def _model_dirs() -> dict[str, Path]:
    return {"target": target_dir(), "draft": draft_dir()}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(target_dir()))


@pytest.fixture(scope="module")
def hf_models():
    from transformers import AutoModelForCausalLM

    from engine.models.hf_compat import dtype_kwarg

    return {name: AutoModelForCausalLM.from_pretrained(str(d), **dtype_kwarg(torch.float32)).eval()
            for name, d in _model_dirs().items()}


@torch.no_grad()
def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    ids = list(ids)
    out = []
    for _ in range(n):
        t = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        out.append(t)
        ids.append(t)
    return out


def test_api():
    assert SERVED_NAME == "specserve-demo"
    assert DEMO_DIR == Path(demo_pair.__file__).resolve().parent
    assert target_dir() == DEMO_DIR / "target" and draft_dir() == DEMO_DIR / "draft"
    assert (DEMO_DIR / "README.md").is_file()


def test_files_total_at_most_25_mb():
    total = sum(f.stat().st_size for f in DEMO_DIR.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    assert total <= MAX_BYTES, f"demo pair is {total / 1e6:.2f} MB"


@pytest.mark.parametrize("name", ["target", "draft"])
def test_each_dir_is_a_standalone_half_precision_checkpoint(name):
    d = _model_dirs()[name]
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (d / f).is_file(), f"{d / f} missing"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["dtype"] == cfg["torch_dtype"] and cfg["dtype"] in ("bfloat16", "float16")
    # Both spellings, so transformers 4.x (the Neuron containers) reads the same rope as 5.x (hf_compat).
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] and "rope_scaling" in cfg
    raw = (d / "model.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"BF16", "F16"}, dtypes
    # one tokenizer shared by both models
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (d / f).read_bytes() == (target_dir() / f).read_bytes()


def test_draft_is_much_smaller_than_target():
    t = json.loads((target_dir() / "config.json").read_text())
    d = json.loads((draft_dir() / "config.json").read_text())
    assert t["vocab_size"] == d["vocab_size"]
    assert d["num_hidden_layers"] * 4 <= t["num_hidden_layers"]


def test_chat_template_and_special_tokens(tokenizer):
    msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|bos|><|system|>\nYou write Python.<|end|>\n<|user|>\ndef add(a, b):<|end|>\n"
                    "<|assistant|>\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for special in ("<|bos|>", "<|system|>", "<|user|>", "<|end|>", "<|assistant|>"):
        assert tokenizer.convert_tokens_to_ids(special) in ids  # one token each, not split into bytes
    assert tokenizer.bos_token == "<|bos|>" and tokenizer.eos_token == "<|eos|>"
    gen = json.loads((target_dir() / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tokenizer.eos_token_id in eos and tokenizer.convert_tokens_to_ids("<|end|>") in eos
    assert tokenizer.decode(tokenizer.encode(PROMPT, add_special_tokens=False)) == PROMPT


def test_transformers_greedy_continuation_reads_as_code(tokenizer, hf_models):
    ids = tokenizer.encode(PROMPT, add_special_tokens=False)
    out = _hf_greedy(hf_models["target"], ids, 16)
    text = tokenizer.decode(out)
    assert any(ch.isalpha() for ch in text), text
    assert max(out.count(t) for t in set(out)) < 16, text  # not one repeated token


@pytest.mark.parametrize("name", ["target", "draft"])
def test_project_loader_matches_transformers_greedy(name, tokenizer, hf_models):
    """The project's loader + torch runner (fp32) continue a prompt exactly as transformers does."""
    from engine.models.loader import load_model
    from engine.models.tokenizer import load_tokenizer
    from engine.runners.base import ForwardBatch
    from engine.runners.torch_runner import TorchRunner

    d = _model_dirs()[name]
    tok = load_tokenizer(d)
    ids = tok.encode(PROMPT, add_special_tokens=False)
    assert ids == tokenizer.encode(PROMPT, add_special_tokens=False)
    runner = TorchRunner(load_model(d, dtype=torch.float32), max_slots=1, max_model_len=128)
    logits = runner.execute(ForwardBatch([0], [ids], [0], [1]))
    ours = []
    for _ in range(N_NEW):
        t = int(logits[-1].argmax())
        ours.append(t)
        logits = runner.execute(ForwardBatch([0], [[t]], [len(ids) + len(ours) - 1], [1]))
    assert ours == _hf_greedy(hf_models[name], ids, N_NEW)


def _copy_sources(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for f in ("pyproject.toml", "README.md"):
        if (REPO / f).is_file():
            shutil.copy(REPO / f, dst / f)
    for pkg in ("engine", "config", "server"):
        if (REPO / pkg).is_dir():
            shutil.copytree(REPO / pkg, dst / pkg, ignore=ignore)


def test_non_editable_install_ships_the_pair(tmp_path):
    """`pip install --no-deps --target` of a copy of the sources (no network, no build isolation), then import the
    package from the install dir in a fresh interpreter outside the checkout."""
    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    _copy_sources(src)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "--disable-pip-version-check", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    code = (
        "import json, engine.demo_pair as d\n"
        "t, dr = d.target_dir(), d.draft_dir()\n"
        "print(json.dumps({'dir': str(d.DEMO_DIR), 'name': d.SERVED_NAME,\n"
        "  'files': sorted(str(p.relative_to(d.DEMO_DIR)) for p in d.DEMO_DIR.rglob('*')\n"
        "                  if p.is_file() and '__pycache__' not in p.parts and p.suffix != '.py')}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert Path(got["dir"]).resolve() == (target / "engine" / "demo_pair").resolve()
    assert got["name"] == SERVED_NAME
    want = sorted(str(p.relative_to(DEMO_DIR)) for p in DEMO_DIR.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py")
    assert got["files"] == want
    for f in ("target/model.safetensors", "draft/model.safetensors", "target/tokenizer.json", "README.md"):
        assert f in got["files"]
