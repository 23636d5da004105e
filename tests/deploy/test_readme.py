"""The README's top works as written for a new user (issue 17 items 3 and 10): the two make targets exist, a new
shell is told how to find `specserve`, the supported architectures are the ones the model code accepts, the trn1
quick start is linked, and every `specserve` command in the README parses with the real CLI."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.models.config import SUPPORTED_MODEL_TYPES
from server.cli import SUBCOMMANDS, build_parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def commands(prefix: str) -> list[list[str]]:
    """Each README shell line that starts with `prefix`, split like a shell would, comments dropped."""
    out = []
    for block in bash_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith(prefix):
                out.append(shlex.split(line, comments=True))
    return out


def test_the_two_make_commands_come_first_and_exist():
    first = bash_blocks()[0]
    assert [c[:2] for c in commands("make ")][:2] == [["make", "serve"], ["make", "test"]]
    assert first.index("make serve") < first.index("make test")
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_a_new_shell_is_told_how_to_find_specserve():
    top = README[:README.index("## ")]  # before the first section: what a user reads right after `make serve`
    assert ". .venv/bin/activate" in top and ".venv/bin/specserve" in top
    assert README.index(". .venv/bin/activate") < README.index("specserve serve")


@pytest.mark.skipif(Path(sys.prefix).resolve() != (REPO / ".venv").resolve(),
                    reason="runs from the repository's own .venv (make test)")
def test_activate_then_specserve_works_in_a_new_shell():
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", ". .venv/bin/activate && specserve --help"],
                       cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert r.returncode == 0, r.stderr
    assert "serve" in r.stdout and "bench" in r.stdout


def test_supported_architectures_are_listed_from_the_model_code():
    section = README[README.index("Supported architectures"):]
    section = section[:section.index("\n\n", section.index("\n- "))]
    listed = re.findall(r"^- `(\w+)`", section, flags=re.M)
    assert listed == list(SUPPORTED_MODEL_TYPES)


def test_trn1_quick_start_is_linked():
    top = README[:README.index("## ")]
    assert "[docs/NEURON.md](docs/NEURON.md)" in top and "quick start" in top
    assert (REPO / "docs" / "NEURON.md").is_file()


def test_every_readme_specserve_command_parses():
    found = commands("specserve ")
    assert len(found) >= 3
    for argv in found:
        sub = argv[1]
        assert sub in SUBCOMMANDS, argv
        if "--help" in argv:
            continue
        parser = build_parser(argv[1:])
        try:
            args, extras = parser.parse_known_args(argv[1:])
        except SystemExit as e:  # argparse error: the README shows a command that cannot run
            raise AssertionError(f"README command does not parse: {shlex.join(argv)}") from e
        assert extras == [], (argv, extras)
