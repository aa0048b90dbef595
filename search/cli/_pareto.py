"""``squeezelstm pareto``: a search's Pareto front rebuilt from the tracking store alone (table, JSON, report)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from squeezelstm import dashboards
from squeezelstm.dashboards.tables import format_refined_table, format_table, front_rows, refined_rows
from squeezelstm.trainers.files import json_safe

from ..backends import read_refinement, refined_path, resolve_paths
from ..pareto import Refinement, log_hypervolume, pareto_front, status_counts
from ..tracking import load_refinement, load_search


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``pareto`` sub-command."""
    parser = subparsers.add_parser(
        "pareto", help="print a search's Pareto front from the tracking store and write its HTML report",
        description="Rebuild a search's Pareto front from the MLflow tracking store alone (any machine that can "
                    "reach it), print it as a table or JSON, and optionally write the HTML report.")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name of the search")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: sqlite:///./mlflow.db; http://host:5000 for a server)")
    parser.add_argument("--json", action="store_true", help="print the front as JSON instead of a table")
    parser.add_argument("--out", type=Path, default=None, metavar="report.html", help="write the HTML report here")
    parser.add_argument("--refined", action="store_true",
                        help="also the search's refinement (squeezelstm refine): each member's mean +- std perplexity "
                             "over seeds, and error bars in the report")
    parser.add_argument("--storage", default=None,
                        help="with --refined: storage of the search, read where the tracking store has no refinement")
    parser.set_defaults(func=run_pareto)


def run_pareto(args: argparse.Namespace) -> int:
    """Load the search, print its front, write the report if asked; returns the exit status."""
    info, records = load_search(args.tracking_uri, args.experiment)
    front = pareto_front(records)
    rows = front_rows(front)
    ref_params, ref_ppl = info.get("ref_params"), info.get("ref_ppl")
    reference = (ref_params, ref_ppl) if ref_params and ref_ppl else None
    hv = log_hypervolume(records, *reference) if reference else None
    refined = _refinement(args) if args.refined else None
    report = None
    if args.out is not None:
        report = dashboards.write_report(records, args.out, title=f"Pareto front of search {args.experiment}",
                              optimal_ppl=info.get("optimal_ppl"), refined=refined,
                              hypervolume_history=info.get("hypervolume_history") or None, reference=reference)
    counts = status_counts(records)
    if args.json:
        print(json.dumps(json_safe({
            "experiment": args.experiment, "parent_run_id": info["run_id"], "tracking_uri": info["tracking_uri"],
            "trials": len(records), "statuses": counts, "hypervolume": hv,
            "reference": list(reference) if reference else None, "optimal_ppl": info.get("optimal_ppl"),
            "front": rows, "report": str(report) if report else None,
            **({"refined": {"selection": refined.selection, "epochs": refined.epochs, "seeds": refined.seeds,
                            "run_id": refined.run_id, "members": refined_rows(refined),
                            "front": [m.number for m in refined.front()]}} if refined else {}),
        }), indent=2))
    else:
        print(f"search {args.experiment}: {len(records)} trials "
              f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'none'}), "
              f"{len(rows)} on the front" + (f", hypervolume {hv:.4f}" if hv is not None else ""))
        print(format_table(rows) if rows else "(no finished trial yet)")
        if refined is not None:
            counts = refined.counts()
            epochs = f"{refined.epochs} epochs" if refined.epochs else "the search's epochs"
            print(f"\nrefined: {len(refined.members)} members ({refined.selection}) x {refined.seeds} seeds, {epochs}; "
                  f"{counts.get('finished', 0)} of {sum(counts.values())} runs finished; "
                  f"refined front of {len(refined.front())} (*); valid ppl as mean +- std over seeds")
            print(format_refined_table(refined_rows(refined)))
        if report:
            print(f"report: {report}", file=sys.stderr)
    return 0


def _refinement(args: argparse.Namespace) -> Refinement:
    """The search's refinement: from the tracking store, else from the search's storage (``refined.json``)."""
    found = load_refinement(args.tracking_uri, args.experiment)
    if found is not None:
        return found[1]
    path = refined_path(resolve_paths(args.experiment, args.storage))
    if path.is_file():
        return read_refinement(path)
    raise ValueError(f"search {args.experiment!r} has no refinement in the tracking store nor in {path}: "
                     f"run squeezelstm refine --experiment {args.experiment} first")
