"""The `specserve` command: `specserve <subcommand> [flags]`.

Subcommands are registered in `SUBCOMMANDS` as name -> (module, one-line help). A module provides
`add_arguments(parser)` and `run(args) -> int` (the exit status) and is imported only when its subcommand runs, so
adding `bench` or `neuron-smoke` is one line here plus the module, and a missing optional module never breaks `serve`.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import types
import typing
from typing import Any, Literal

from config.settings import SECTIONS

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("server.serve_cmd", "run the OpenAI-compatible HTTP server"),
    "bench": ("bench.cli", "load generator against an OpenAI-compatible server; compare configurations"),
    "neuron-smoke": ("engine.runners.neuron_smoke", "compile a tiny model on a Neuron runner and compare logits with torch"),
}


def _unwrap_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def add_settings_flags(parser: argparse.ArgumentParser) -> set[str]:
    """One flag per settings field (`max_num_seqs` -> `--max-num-seqs`), grouped by section, help = the field's
    description. Defaults are SUPPRESSed so only flags the user gave reach `load_settings` (CLI > env > YAML >
    defaults). Returns the dests added."""
    dests = set()
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        for name, field in cls.model_fields.items():
            ann = _unwrap_optional(field.annotation)
            default = field.default
            help_text = (field.description or "").replace("%", "%%")
            kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
            if ann is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
                help_text += f" (default: {str(default).lower()})"
            elif typing.get_origin(ann) is Literal:
                kwargs["choices"] = list(typing.get_args(ann))
                help_text += f" (default: {default})"
            elif typing.get_origin(ann) is list:
                kwargs["metavar"] = "N,N,..."  # the settings model splits comma-separated lists
                if default is not None:
                    help_text += f" (default: {default})"
            else:
                kwargs["type"] = ann if ann in (int, float, str) else str
                kwargs["metavar"] = {int: "N", float: "X"}.get(ann, name.upper())
                if default is not None:
                    help_text += f" (default: {default})"
            kwargs["help"] = help_text
            group.add_argument("--" + name.replace("_", "-"), **kwargs)
            dests.add(name)
    return dests


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument error is one line on stderr (`specserve serve: error: ...`) and exit status 2, not the whole
    usage block before it: with ~40 serve flags the usage was 25 lines and pushed the error out of sight."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def unrecognized(self, extras: list[str]) -> typing.NoReturn:
        """Unknown flags, reported by the subcommand that got them, with the closest real flag where one is near."""
        known = [s for a in self._actions for s in a.option_strings]
        hints = []
        for arg in extras:
            close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1) if arg.startswith("--") else []
            if close:
                hints.append(f"did you mean {close[0]}?")
        self.error(f"unrecognized arguments: {' '.join(extras)}" + (f"; {' '.join(hints)}" if hints else ""))


def build_parser(argv: list[str]) -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="specserve", description="OpenAI-compatible speculative-decoding server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser)
    chosen = argv[0] if argv else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            p.set_defaults(_run=lambda args, n=name: _unavailable(n))
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def _unavailable(name: str) -> int:
    print(f"specserve {name}: this subcommand is not available in this installation", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    if extras:  # a mistyped flag of a subcommand: its own usage, not the top-level one
        getattr(args, "_parser", parser).unrecognized(extras)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
