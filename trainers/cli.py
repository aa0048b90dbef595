"""``squeezelstm train CONFIG [--set key=value ...] [--json]``: train one config from the command line.

Progress goes to stderr; ``--json`` prints one final JSON object (``TrainResult.to_dict()``) to
stdout. Bad configs, overrides or data paths raise ValueError/TypeError/FileNotFoundError, which
the ``squeezelstm`` entry point prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import apply_overrides, load_config, validate
from .loop import train

EXIT_CODES = {"finished": 0, "pruned": 0, "diverged": 1, "failed": 1}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` sub-command."""
    p = subparsers.add_parser("train", help="train one language model from a config file",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML or TOML config with sections data, model, train")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.hidden_size=128 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the final result as one JSON object on stdout")
    p.add_argument("--checkpoint-dir", default=None, help="write a checkpoint every epoch here and resume from it")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --checkpoint-dir")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train ``args.config`` with its overrides; returns the exit status (1 if the run diverged or failed)."""
    config = validate(apply_overrides(load_config(args.config), args.overrides))
    if args.checkpoint_dir is not None and os.path.exists(args.checkpoint_dir) and not os.path.isdir(args.checkpoint_dir):
        # found now, not after the first epoch when the checkpoint is written
        raise ValueError(f"--checkpoint-dir is a file, not a folder: {args.checkpoint_dir}")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = train(config, checkpoint_dir=args.checkpoint_dir, resume=not args.no_resume,
                   progress=None if args.quiet else progress)
    if args.json:
        print(json.dumps(result.to_dict()))
    elif args.quiet:
        print(f"{result.status}: valid ppl {result.valid_ppl} test ppl {result.test_ppl} params {result.params}")
    return EXIT_CODES[result.status]
