"""Install specserve into an AWS Neuron container without changing anything the container pinned.

The Neuron images pin their whole Python stack (torch, torch-neuronx, neuronx-cc, transformers, numpy < 1.24, protobuf
< 4, ...). The Dockerfile runs, inside the base image, before and after `pip install`:

    python -m pip freeze | python pip_constraints.py constraints > /tmp/image-pins.txt   # every package, numpy included
    python -m pip install -c /tmp/image-pins.txt specserve.whl    # fails instead of upgrading a pinned package
    python -m pip freeze | python pip_constraints.py check /tmp/image-freeze.txt   # nothing pinned moved

`constraints` turns each `pip freeze` line into `name==version`: direct references (`name @ file:///...`, how conda
and local wheels show up) and editable installs become `name==<installed version>`, since pip rejects links in a
constraints file. `check` lists every package whose version changed or that disappeared; exit status 1 if any.
Standard library only: it runs on the image's own Python (3.10 on SDK 2.25) before specserve is installed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from importlib import metadata

_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)$")
_DIRECT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*@\s*\S+")
_EGG = re.compile(r"[#&]egg=([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 name: `Torch_Neuronx` and `torch-neuronx` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_freeze(lines: Iterable[str], version_of: Callable[[str], str] = metadata.version) -> dict[str, str]:
    """canonical name -> installed version, from `pip freeze` output.

    `version_of(name)` resolves lines that carry no version (direct references, `-e` installs); the default asks the
    running interpreter, which is the image's own when run there. Comments, blank lines and options are skipped; a
    direct reference whose version cannot be found raises, since leaving it out would let pip replace it.
    """
    out: dict[str, str] = {}
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if m := _PINNED.match(line):
            out[canonical(m.group(1))] = m.group(3)
            continue
        name = None
        if m := _DIRECT.match(line):
            name = m.group(1)
        elif line.startswith(("-e ", "--editable ")) and (m := _EGG.search(line)):
            name = m.group(1)
        elif line.startswith("-"):
            continue  # other pip options (-i, --extra-index-url, -f ...)
        if name is None:
            raise ValueError(f"cannot read pip freeze line {raw.rstrip()!r}")
        out[canonical(name)] = version_of(name)
    return out


def constraints(lines: Iterable[str], version_of: Callable[[str], str] = metadata.version) -> list[str]:
    """`name==version` for every installed package, sorted: a pip constraints file."""
    return [f"{name}=={version}" for name, version in sorted(parse_freeze(lines, version_of).items())]


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Human-readable list of packages of `before` that `after` lost or holds at another version."""
    out = []
    for name, version in sorted(before.items()):
        now = after.get(name)
        if now is None:
            out.append(f"{name} {version} was removed")
        elif now != version:
            out.append(f"{name} changed {version} -> {now}")
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["constraints"] and len(argv) == 1:
        sys.stdout.write("".join(line + "\n" for line in constraints(sys.stdin)))
        return 0
    if argv[:1] == ["check"] and len(argv) == 2:
        with open(argv[1]) as f:
            before = parse_freeze(f)
        diff = changed(before, parse_freeze(sys.stdin))
        for line in diff:
            print(f"pip_constraints: {line}", file=sys.stderr)
        return 1 if diff else 0
    print("usage: pip freeze | pip_constraints.py constraints\n"
          "       pip freeze | pip_constraints.py check BEFORE_FREEZE.txt", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
