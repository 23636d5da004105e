"""docs/NEURON.md's trn1 quick start works as written: every `docker run ... specserve:neuron ARGS` line parses with
the real CLI (serve flags, or `neuron-smoke` flags after `--entrypoint specserve`), and the versions table names the
commits the fakes and real_signatures.json were written from."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from server.cli import build_parser

REPO = Path(__file__).resolve().parents[4]
DOC = (REPO / "docs" / "NEURON.md").read_text()


def docker_runs() -> list[list[str]]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", DOC, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("docker run"):
                out.append(shlex.split(line, comments=True))
    return out


def test_quick_start_docker_lines_parse():
    runs = docker_runs()
    assert len(runs) >= 2
    for argv in runs:
        image = next(i for i, a in enumerate(argv) if a.startswith("specserve:"))
        assert "--device=/dev/neuron0" in argv
        args = argv[image + 1:]
        if "--entrypoint" in argv:  # `--entrypoint specserve IMAGE neuron-smoke ...`
            cmd = args
        else:  # the image's entrypoint is `specserve serve`
            cmd = ["serve", *args]
        parser = build_parser(cmd)
        parsed, extras = parser.parse_known_args(cmd)
        assert extras == [], (argv, extras)


def test_versions_table_names_the_pinned_commits():
    sigs = json.loads((Path(__file__).parent / "real_signatures.json").read_text())
    for lib in sigs.values():
        for v in lib:
            assert f"`{v['commit']}`" in DOC and v["version"] in DOC
