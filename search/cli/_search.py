"""``squeezelstm search``, ``export`` and ``demo``: thin command-line faces of ``run_search`` and ``export``."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from squeezelstm import dashboards
from squeezelstm.dashboards.tables import format_table, front_rows

from ..backends import SearchInterrupted, read_records, run_search
from ..config import SearchConfig
from ..export import export_trial, knee_point, load_records, pick, trial_checkpoint_dir
from ..pareto import TrialRecord, size_text, status_counts
from ..samplers import DEFAULT_SAMPLER
from ..space import load_space, override_items
from ._main import UserError


def add_parser(sub: Any) -> None:
    """Register the ``search``, ``export`` and ``demo`` sub-commands."""
    p = sub.add_parser("search", help="search a space of LSTM-family models on Ray Tune",
                       description="Search a space of LSTM-family models on Ray Tune; ends with the Pareto table.")
    p.add_argument("--space", required=True, help="space file (YAML/TOML) or shipped space name (default, ptb, ...)")
    p.add_argument("--trials", type=int, required=True, help="trials in total (over all --resume sessions)")
    p.add_argument("--experiment", required=True, help="experiment name (storage folder and MLflow experiment)")
    _add_search_options(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of this experiment")
    p.add_argument("--json", action="store_true", help="print the final front as JSON on stdout")
    p.set_defaults(func=cmd_search)

    e = sub.add_parser("export", help="write the config of one Pareto-optimal trial",
                       description="Pick one Pareto-optimal trial and write the config `squeezelstm train` reads.")
    e.add_argument("--experiment", required=True)
    rule = e.add_mutually_exclusive_group()
    rule.add_argument("--max-size", "--max-params", dest="max_size", type=int,
                      help="most accurate trial of at most N in the search's size objective (parameters, "
                           "recurrent parameters or FLOPs, as the search chose)")
    rule.add_argument("--max-ppl", type=float, help="smallest trial with at most this validation perplexity")
    rule.add_argument("--knee", action="store_true", help="the knee of the front (the default rule)")
    e.add_argument("--out", required=True, help="config file to write (.yaml or .toml)")
    e.add_argument("--checkpoint", action="store_true", help="also copy the trial's checkpoint next to --out")
    e.add_argument("--storage", default=None, help="storage the search used (default ./squeezelstm_runs)")
    e.add_argument("--tracking-uri", default=None, help="read the trials from this MLflow store")
    e.add_argument("--json", action="store_true", help="print the chosen trial as JSON on stdout")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="a small search on the synthetic corpus, its report and best config",
                       description="Search the shipped default space on the synthetic corpus, then write "
                                   "pareto_report.html and best.yaml (the knee) in --out-dir.")
    d.add_argument("--trials", type=int, default=12)
    d.add_argument("--experiment", default=None, help="default: demo-<date>-<time>")
    d.add_argument("--out-dir", default=".", help="where pareto_report.html and best.yaml go")
    _add_search_options(d, space_default="default")
    d.set_defaults(func=cmd_demo)


def _add_search_options(p: argparse.ArgumentParser, space_default: str | None = None) -> None:
    if space_default is not None:
        p.add_argument("--space", default=space_default, help="space file or shipped space name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space key, e.g. --set data.path=~/data/ptb (repeatable)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the space's)")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER,
                   help="ehvi (exact-size expected hypervolume improvement, the default), or Optuna's tpe, nsga2, gp, random")
    p.add_argument("--pruner", default="pareto", help="pruner: pareto (default), median, percentile, hyperband, none, ...")
    p.add_argument("--pruner-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="pruner argument, e.g. --pruner-arg n_warmup_steps=1 (repeatable)")
    p.add_argument("--size", default=None, metavar="total|recurrent|flops",
                   help="size objective: total parameters, recurrent (the cells') parameters or FLOPs per "
                        "token (default: the space's size:, else total)")
    p.add_argument("--seed", type=int, default=0)
    add_run_options(p, unit="trial", storage_help="results and checkpoints: a folder or s3:// / gs:// URI")
    p.add_argument("--quiet", action="store_true", help="no live progress lines")


def add_run_options(p: argparse.ArgumentParser, *, unit: str, storage_help: str) -> None:
    """The Ray resources, storage and MLflow flags that ``search``, ``demo`` and ``refine`` share (``unit``
    names what runs: a trial, a run)."""
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=0, help="fractions such as 0.25 share a GPU")
    p.add_argument("--max-concurrent", type=int, default=None, help=f"{unit}s at once (default: as resources allow)")
    p.add_argument("--max-failures", type=int, default=0, help=f"Ray retries of a crashed {unit}")
    p.add_argument("--storage", default=None, help=storage_help)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///./mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def _progress(args: argparse.Namespace):
    if args.quiet:
        return None

    def show(event: Any) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {event.line()}", file=sys.stderr, flush=True)

    return show


def search_config(args: argparse.Namespace, *, space: str, trials: int, experiment: str) -> SearchConfig:
    """The ``SearchConfig`` a ``search`` or ``demo`` command line describes (validated there, once)."""
    return SearchConfig(
        load_space(space, args.overrides or None), experiment=experiment, trials=trials, epochs=args.epochs,
        sampler=args.sampler, pruner=args.pruner, pruner_options=_pruner_args(args.pruner_arg), seed=args.seed,
        address=args.address, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures, storage=args.storage,
        tracking_uri=args.tracking_uri, track=not args.no_tracking, size=args.size,
    )


def _run(args: argparse.Namespace, *, space: str, trials: int, experiment: str, resume: bool):
    # stdout carries only the command's result (the table, or --json): what Ray prints while the
    # search runs (e.g. "(raylet) Raylet is terminated" when a node dies) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr), _tracking_outage_is_a_clean_stop(args, experiment):
        config = search_config(args, space=space, trials=trials, experiment=experiment)
        # the composition root: the dashboards write the front's tables and report that tracking logs
        return run_search(config, resume=resume, progress=_progress(args), front_files=dashboards.write_front_files)


def _tracking_failure(exc: BaseException) -> BaseException | None:
    """The MLflow / HTTP error behind ``exc`` (it may come wrapped by Ray), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        module = type(exc).__module__ or ""
        if module.startswith(("mlflow", "requests", "urllib3")):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def _tracking_outage_is_a_clean_stop(args: argparse.Namespace, experiment: str):
    """Turn a tracking server that stays down past MLflow's own retries into a one-line error.

    Nothing is lost: the controller's records and every trial's checkpoints are on disk, and trial
    loggers keep the epochs the server refused; the message says how to continue.
    """
    try:
        yield
    except Exception as exc:
        cause = _tracking_failure(exc)
        if cause is None:
            raise
        reason = " ".join(str(cause).split())[:200]
        raise UserError(
            f"the tracking server failed during search {experiment!r} ({type(cause).__name__}: {reason}); "
            f"finished trials and checkpoints are kept: continue with the same command and --resume"
        ) from exc


def continue_command(argv: list[str] | None, args: argparse.Namespace) -> str:
    """The exact command that continues a stopped search: its own arguments with ``--resume``
    (a ``demo``, or a call without them, gets the equivalent ``search`` command)."""
    if argv and "search" in argv:
        argv = list(argv)
        return shlex.join(["squeezelstm"] + argv + ([] if "--resume" in argv else ["--resume"]))
    out = ["squeezelstm", "search", "--space", str(args.space), "--trials", str(args.trials),
           "--experiment", str(args.experiment)]
    for flag, value in (("--sampler", args.sampler), ("--pruner", args.pruner), ("--epochs", args.epochs),
                        ("--size", getattr(args, "size", None)),
                        ("--storage", args.storage), ("--tracking-uri", args.tracking_uri), ("--address", args.address)):
        if value is not None:
            out += [flag, str(value)]
    for item in args.overrides:
        out += ["--set", item]
    if args.no_tracking:
        out.append("--no-tracking")
    return shlex.join(out + ["--resume"])


def interrupted_line(exc: SearchInterrupted, experiment: str, command: str) -> str:
    """The one line a stopped search prints: which signal, what finished, what was running, how to continue."""
    counts = exc.counts
    done = ", ".join(f"{counts[k]} {k}" for k in ("finished", "pruned", "failed", "diverged") if counts.get(k))
    running = counts.get("running", 0)
    how = "stopped at once" if exc.immediate else "stopped"
    kept = f"; {running} running trial(s) keep their last epoch checkpoint" if running else ""
    done = done or ("no trial closed" if counts else "trials as recorded")
    return (f"squeezelstm: search {experiment!r} interrupted by {exc.name} ({how}): {done}{kept}; "
            f"continue with: {command}")


def _pruner_args(items: list[str]) -> dict:
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--pruner-arg must be KEY=VALUE, got {item!r}")
    return dict(override_items(items))  # values read as YAML, as --set's


def front_table(front: list[TrialRecord]) -> str:
    """The Pareto front as the dashboards' text table."""
    return format_table(front_rows(front))


def _record_json(r: TrialRecord) -> dict:
    return {"number": r.number, "family": r.family, "size": r.size, "params": r.params,
            "recurrent_params": r.recurrent_params, "flops": r.flops, "dense": r.dense, "valid_ppl": r.valid_ppl,
            "test_ppl": r.test_ppl, "epochs": r.epochs, "sampled": r.sampled, "config": r.config}


def _summary(result: Any) -> str:
    counts = status_counts(result.records)
    done = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    hv = "" if result.hypervolume is None else f", hypervolume {result.hypervolume:.4f}"
    return (f"search {result.experiment}: {len(result.records)} trials ({done}) in {result.elapsed_s:.0f} s; "
            f"Pareto front of {len(result.front)}{hv}; results in {result.paths.experiment_dir}")


def run_or_stop(run: Callable[[], Any], line: Callable[[SearchInterrupted], str]) -> tuple[Any, int | None]:
    """``(run(), None)``, or ``(None, exit status)`` where a signal stopped it, after ``line(exc)`` (what
    finished, how to continue) on stderr. A KeyboardInterrupt that met Python's default handler, outside
    the runner's (Ray may restore it), is a SIGINT that stopped the run at once."""
    try:
        return run(), None
    except KeyboardInterrupt:
        exc = SearchInterrupted(signal.SIGINT, immediate=True)
    except SearchInterrupted as stopped:
        exc = stopped
    print(line(exc), file=sys.stderr)
    return None, exc.exit_status


def cmd_search(args: argparse.Namespace) -> int:
    result, stopped = run_or_stop(
        lambda: _run(args, space=args.space, trials=args.trials, experiment=args.experiment, resume=args.resume),
        lambda exc: interrupted_line(exc, args.experiment, continue_command(getattr(args, "argv", None), args)))
    if stopped is not None:
        return stopped
    print(_summary(result), file=sys.stderr)
    if args.json:
        print(json.dumps([_record_json(r) for r in result.front], indent=2, default=str))
    else:
        print(front_table(result.front))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    meta, records = load_records(args.experiment, storage=args.storage, tracking_uri=args.tracking_uri)
    record = pick(records, max_size=args.max_size, max_ppl=args.max_ppl, knee=args.knee)
    ckpt = trial_checkpoint_dir(meta, args.experiment, record.number, args.storage) if args.checkpoint else None
    summary = export_trial(record, args.out, experiment=args.experiment, checkpoint_from=ckpt)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"trial {record.number} ({record.family}, {size_text(record)}, valid ppl {record.valid_ppl:.2f}) "
              f"-> {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"--out-dir does not exist: {out_dir}")
    experiment = args.experiment = args.experiment or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    result, stopped = run_or_stop(  # a stopped demo is continued by the equivalent `search` command
        lambda: _run(args, space=args.space, trials=args.trials, experiment=experiment, resume=False),
        lambda exc: interrupted_line(exc, experiment, continue_command(None, args)))
    if stopped is not None:
        return stopped
    print(_summary(result), file=sys.stderr)
    print(front_table(result.front))
    if not result.front:
        raise ValueError("no trial finished, so there is no front to report or export")
    report = out_dir / "pareto_report.html"
    meta = _meta(result)
    reference = (meta["ref_params"], meta["ref_ppl"]) if meta.get("ref_params") and meta.get("ref_ppl") else None
    dashboards.write_report(result.records, report, title=f"squeezelstm {experiment}",
                            optimal_ppl=meta.get("optimal_ppl"), reference=reference)
    print(f"report: {report}", file=sys.stderr)
    best = knee_point(result.front)
    export_trial(best, out_dir / "best.yaml", experiment=experiment)
    print(f"best (knee): trial {best.number}, {best.family}, {size_text(best)}, valid ppl "
          f"{best.valid_ppl:.2f} -> {out_dir / 'best.yaml'}", file=sys.stderr)
    return 0


def _meta(result: Any) -> dict:
    try:
        meta, _ = read_records(result.paths.records_file)
    except (OSError, ValueError):
        return {}
    return meta
