"""The ``squeezelstm`` command: the composition root that wires search, tracking and the dashboards together."""

from ._main import COMMANDS, UserError, build_parser, main

__all__ = ["COMMANDS", "UserError", "build_parser", "main"]
