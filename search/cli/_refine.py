"""``squeezelstm refine``: a search's front members trained again at a full budget with several seeds each.

The composition root of a refinement: the members are chosen from the search's records (``pareto``), trained as
Ray Tune trials (``backends.run_refine``) under one MLflow parent run of their own (``tracking.RefineTracker``),
and shown as a table (mean +- std over seeds) and as error bars in the report (``dashboards``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from squeezelstm import dashboards
from squeezelstm.dashboards.tables import format_refined_table, refined_rows
from squeezelstm.trainers import Config
from squeezelstm.trainers.files import json_safe

from ..backends import SearchInterrupted, read_refinement, refined_path, resolve_paths, run_refine
from ..export import load_records
from ..pareto import MIN_SEEDS, Refinement, check_overrides, check_seeds, new_refinement, refine_config
from ..space import override_items
from ..tracking import RefineTracker
from ._search import _tracking_outage_is_a_clean_stop, add_run_options, run_or_stop

DEFAULT_SEEDS = MIN_SEEDS


def add_parser(sub: Any) -> None:
    """Register the ``refine`` sub-command."""
    p = sub.add_parser(
        "refine", help="train a search's front again at a full budget with several seeds: the final front",
        description="Train the front members of a finished (or interrupted) search again, each with several seeds, "
                    "as Ray Tune trials under one MLflow parent run; prints each member's mean +- std perplexity "
                    "and writes refined.json and refined_report.html next to the search's records.")
    p.add_argument("--experiment", required=True, help="the search to refine (its --experiment)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every run (default: the epochs each member trained for in the search)")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per member (default {DEFAULT_SEEDS}; at least {MIN_SEEDS}, a spread needs two); "
                        "on --resume a larger number adds seeds")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--front", action="store_true", help="refine the search's Pareto front (the default)")
    which.add_argument("--top", type=int, default=None, metavar="N",
                       help="refine the N first finished trials in non-dominated order (the front, then the next "
                            "front, ...; by validation perplexity within one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change the training of every member, e.g. --set train.asgd=true (train.* keys, and "
                        "data.path where the corpus has moved; repeatable)")
    add_run_options(p, unit="run", storage_help="storage the search used (default ./squeezelstm_runs)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted refinement of this search")
    p.add_argument("--json", action="store_true", help="print the refined members as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no live progress lines")
    p.set_defaults(func=cmd_refine)


def _overrides(items: list[str]) -> dict[str, Any]:
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set must be KEY=VALUE, got {item!r}")
    return check_overrides(dict(override_items(items)))


def _check_numbers(args: argparse.Namespace) -> None:
    """The numeric flags, before anything is read: one line each."""
    if args.seeds is not None:
        check_seeds(args.seeds)
    if args.top is not None and args.top < 1:
        raise ValueError(f"--top must be >= 1, got --top {args.top}")
    if args.epochs is not None and args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got --epochs {args.epochs}")


def _resumed(args: argparse.Namespace, path: Path, overrides: dict[str, Any]) -> Refinement:
    """The stored refinement, checked against the flags given again (a larger --seeds adds seeds)."""
    if not path.is_file():
        raise ValueError(f"nothing to resume: search {args.experiment!r} has no refinement ({path})")
    ref = read_refinement(path)
    differs = []
    if args.epochs is not None and args.epochs != ref.epochs:
        differs.append(f"--epochs {ref.epochs or '(the search epochs)'}")
    if args.overrides and overrides != ref.overrides:
        differs.append("--set " + " --set ".join(f"{k}={v}" for k, v in ref.overrides.items()) if ref.overrides
                       else "no --set")
    if (args.top is not None and ref.selection != f"top {args.top}") or (args.front and ref.selection != "front"):
        differs.append(f"--{ref.selection}")
    if differs:
        raise ValueError(f"the refinement of {args.experiment!r} was started with {', '.join(differs)}; "
                         f"resume it with the same settings (or remove {path} to start again)")
    if args.seeds is not None and args.seeds != ref.seeds:
        ref.add_seeds(args.seeds)
    return ref


def _check_members(ref: Refinement) -> None:
    """Every member's refined config is valid and its corpus is there: one line naming the member otherwise."""
    for m in ref.members:
        for run in m.runs[:1]:
            try:
                config = Config.from_dict(refine_config(m.config, epochs=ref.epochs, seed=run.seed,
                                                        overrides=ref.overrides))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"member {m.number} ({m.family}): {exc}") from None
            phases = [*config.train.grow_epochs, *config.train.prune_epochs]
            if phases and max(phases) > config.train.epochs:
                # an H-LSTM that stops before its last prune phase would not have the live size the search recorded
                raise ValueError(f"member {m.number} ({m.family}) grows or prunes after epoch {max(phases)}: "
                                 f"--epochs must be at least {max(phases)} to keep the sizes the search recorded")
            path = config.data.path
            if config.data.corpus != "synthetic" and (not path or not Path(path).expanduser().exists()):
                raise FileNotFoundError(f"data path of member {m.number} does not exist: {path!r} (give the "
                                        "corpus with --set data.path=DIR_OR_FILE)")


def continue_command(argv: list[str] | None, args: argparse.Namespace) -> str:
    """The command that continues a stopped refinement: its own arguments with ``--resume``."""
    if argv and "refine" in argv:
        return shlex.join(["squeezelstm", *argv] + ([] if "--resume" in argv else ["--resume"]))
    out = ["squeezelstm", "refine", "--experiment", args.experiment]
    for flag in ("storage", "tracking_uri", "address"):
        if getattr(args, flag, None):
            out += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return shlex.join(out + (["--no-tracking"] if args.no_tracking else []) + ["--resume"])


def _progress(args: argparse.Namespace):
    if args.quiet:
        return None
    return lambda event: print(f"[{time.strftime('%H:%M:%S')}] {event.line()}", file=sys.stderr, flush=True)


def _stopped_line(exc: SearchInterrupted, experiment: str, command: str) -> str:
    counts = exc.counts
    total = sum(counts.values())
    how = "stopped at once" if exc.immediate else "stopped"
    running = counts.get("running", 0)
    kept = f"; {running} running run(s) keep their last epoch checkpoint" if running else ""
    return (f"squeezelstm: refine of {experiment!r} interrupted by {exc.name} ({how}): "
            f"{counts.get('finished', 0)} of {total} runs finished{kept}; continue with: {command}")


def cmd_refine(args: argparse.Namespace) -> int:
    _check_numbers(args)
    overrides = _overrides(args.overrides)
    paths = resolve_paths(args.experiment, args.storage)
    path = refined_path(paths)
    if not args.resume and path.is_file():
        raise ValueError(f"search {args.experiment!r} is already refined ({path}); pass --resume to continue it, "
                         "or remove that file to start again")
    meta, records = load_records(args.experiment, storage=args.storage, tracking_uri=args.tracking_uri)
    if args.resume:
        ref = _resumed(args, path, overrides)
    else:
        ref = new_refinement(args.experiment, records, seeds=args.seeds or DEFAULT_SEEDS, epochs=args.epochs,
                             top=args.top, overrides=overrides)
    _check_members(ref)

    def files(refinement: Refinement, folder: Path) -> list[str]:
        return dashboards.write_refined_files(refinement, folder, records=records, optimal_ppl=meta.get("optimal_ppl"))

    tracker = None if args.no_tracking else RefineTracker(args.tracking_uri, args.experiment, refined_files=files)

    def refine() -> Refinement:
        # stdout carries only the result (the table or --json); what Ray prints goes to stderr
        with contextlib.redirect_stdout(sys.stderr), _tracking_outage_is_a_clean_stop(args, args.experiment):
            return run_refine(ref, storage=args.storage, tracker=tracker, address=args.address,
                              cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                              max_concurrent=args.max_concurrent, max_failures=args.max_failures,
                              progress=_progress(args))

    ref, stopped = run_or_stop(
        refine, lambda exc: _stopped_line(exc, args.experiment, continue_command(getattr(args, "argv", None), args)))
    if stopped is not None:
        return stopped
    report = paths.experiment_dir / files(ref, paths.experiment_dir)[0]
    counts = ref.counts()
    epochs = f"{ref.epochs} epochs" if ref.epochs else "the search's epochs"
    print(f"refine {args.experiment}: {len(ref.members)} members ({ref.selection}) x {ref.seeds} seeds, {epochs}: "
          f"{counts.get('finished', 0)} of {sum(counts.values())} runs finished; refined front of {len(ref.front())}; "
          f"results in {path}; report {report}", file=sys.stderr)
    rows = refined_rows(ref)
    if args.json:
        print(json.dumps(json_safe({"experiment": ref.experiment, "selection": ref.selection, "epochs": ref.epochs,
                                    "seeds": ref.seeds, "run_id": ref.run_id, "search_run_id": ref.search_run_id,
                                    "file": str(path), "report": str(report), "members": rows,
                                    "front": [m.number for m in ref.front()]}), indent=2))
    else:
        print(format_refined_table(rows))
    return 0
