"""The ``squeezelstm`` command: one entry point, a sub-command per job.

Each sub-command lives beside the code it drives and exposes ``add_parser(subparsers)`` (which
registers it and sets ``func``). Bad input ends with one line on stderr and exit status 2; only
``--debug`` shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, attribute) of each sub-command's ``add_parser``; imported lazily so that
# ``squeezelstm train`` never pays for importing Ray or MLflow.
COMMANDS = {
    "train": "squeezelstm.trainers.cli",
    "search": "squeezelstm.search.cli._search",
    "export": "squeezelstm.search.cli._search",
    "demo": "squeezelstm.search.cli._search",
    "pareto": "squeezelstm.search.cli._pareto",
    "replay": "squeezelstm.search.cli._replay",
    "refine": "squeezelstm.search.cli._refine",
}


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (no usage block), like every other error of the command."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="squeezelstm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if a in COMMANDS), None)
    modules = [COMMANDS[wanted]] if wanted else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        args.argv = argv  # what the command was called with (a stopped search prints how to continue it)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("squeezelstm: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if debug:
            raise
        print(f"squeezelstm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
