"""Prompt sets for the load generator: bundled JSONL files, or any user JSONL file.

A record is `{"prompt": str}` (sent to /v1/completions) or `{"messages": [...]}` (sent to /v1/chat/completions), with
an optional `"max_tokens"` overriding the run's. Bundled sets (`bench/data/`), rebuilt by
`python -m bench.datasets` with fixed rules (no randomness, so the files are reproducible on the same Python):

- `code`: code-completion prompts from the demo pair's *held-out* corpus: the Python standard library files with
  sha256(relative path) mod 50 == 0 (`tools/train_demo_pair.py` never trains on them). Each prompt is the 8 lines up to
  and including a `def` line (every third def of a file, at most 3 per file, 120..500 characters), so the model
  continues a function body. Prompts stay short enough for the demo pair's 512-token context with 64 new tokens.
- `chat`: chat turns (`messages`) asking to continue, explain or write short code, built from the same held-out files.
- `repetitive`: extractive prompts whose answer is in the prompt ("the same code again", "rename x to y"): prompt-lookup
  (n-gram) speculation should accept long runs here.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED = ("code", "chat", "repetitive", "instruct", "extract")
# `instruct` (general requests: explain, write, summarize, tips) and `extract` (answers drawn from a text in the
# prompt) are hand-written for the default instruct model and kept as files; build_bundled() does not regenerate them.
HELD_OUT_MOD = 50  # the demo pair's held-out rule (tools/train_demo_pair.py)


def load_dataset(name_or_path: str) -> list[dict[str, Any]]:
    """A bundled set by name, or a JSONL file path. Raises ValueError on an empty or malformed file."""
    path = DATA_DIR / f"{name_or_path}.jsonl" if name_or_path in BUNDLED else Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"dataset {name_or_path!r}: no bundled set of that name ({', '.join(BUNDLED)}) and no such file")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if not isinstance(rec, dict) or not (isinstance(rec.get("prompt"), str) or isinstance(rec.get("messages"), list)):
            raise ValueError(f"{path}:{n}: each line must be an object with 'prompt' (str) or 'messages' (list)")
        items.append(rec)
    if not items:
        raise ValueError(f"dataset {path} is empty")
    return items


# ---------------------------------------------------------------------------------------------------- bundled sets

def held_out_files() -> list[tuple[str, str]]:
    """(relative path, text) of the held-out stdlib files, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file()):
        rel = p.relative_to(root).as_posix()
        if int(hashlib.sha256(rel.encode()).hexdigest(), 16) % HELD_OUT_MOD != 0:
            continue
        try:
            out.append((rel, p.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def _def_windows(text: str, per_file: int = 3, every: int = 3, lines_before: int = 7) -> list[str]:
    lines = text.splitlines()
    defs = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("def ") and ln.rstrip().endswith(":")
            and i >= lines_before]
    out = []
    for i in defs[::every][:per_file]:
        window = "\n".join(lines[i - lines_before:i + 1]) + "\n"
        if 120 <= len(window) <= 500:
            out.append(window)
    return out


def _functions(text: str, max_lines: int = 10, max_chars: int = 360) -> list[str]:
    """Short complete top-level functions (def line .. last indented line)."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("def ") and lines[i].rstrip().endswith(":"):
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                j += 1
            body = "\n".join(lines[i:j]).rstrip() + "\n"
            if 3 <= j - i <= max_lines and len(body) <= max_chars:
                out.append(body)
            i = j
        else:
            i += 1
    return out


def build_bundled() -> dict[str, list[dict[str, Any]]]:
    files = held_out_files()
    code = [{"prompt": w} for _, text in files for w in _def_windows(text)]
    funcs = [f for _, text in files for f in _functions(text)]
    chat = []
    asks = ("Continue this code:\n{}", "Explain what this Python function does:\n{}",
            "Add a docstring to this function:\n{}", "Write a unit test for this function:\n{}")
    for i, f in enumerate(funcs[:48]):
        chat.append({"messages": [{"role": "user", "content": asks[i % len(asks)].format(f)}]})
    rep = []
    for i, f in enumerate(funcs[:64]):
        first = f.splitlines()[0]
        if i % 2 == 0:
            prompt = f"{f}\n\n# The same function again, unchanged:\n{first}\n"
        else:
            prompt = f"# Original:\n{f}\n# Copy with the function renamed to `renamed`:\n" + \
                first.replace(first[4:first.index('(')] if '(' in first else first[4:], "renamed", 1) + "\n"
        rep.append({"prompt": prompt})
    return {"code": code, "chat": chat, "repetitive": rep}


def write_bundled(out_dir: Path = DATA_DIR) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, items in build_bundled().items():
        (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items),
                                                encoding="utf-8")
        counts[name] = len(items)
    return counts


if __name__ == "__main__":
    print(write_bundled())
