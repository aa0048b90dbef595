"""``squeezelstm replay``: a search replayed over recorded learning curves, to choose a strategy before GPU hours.

The real controller (sampler, pruner, bookkeeping) drives simulated workers whose trials follow the
nearest recorded configuration's curve (``search.backends.replay_search``); the command prints the
front found, the hypervolume against simulated compute and the driver's own cost.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from squeezelstm.dashboards.tables import format_table
from squeezelstm.trainers.files import json_safe

from ..backends import MAPPINGS, CurveTable, run_replay
from ..config import SearchConfig
from ..samplers import DEFAULT_SAMPLER
from ..space import load_space, shipped_spaces
from ._search import _pruner_args


def add_parser(sub: Any) -> None:
    """Register the ``replay`` sub-command."""
    p = sub.add_parser(
        "replay", help="replay a search over recorded learning curves (no training): front, hypervolume, driver cost",
        description="Replay a search over a table of recorded learning curves (benchmarks/record_curves.py): the "
                    "real sampler and pruner, simulated workers and training. Prints the front found, hypervolume "
                    "against simulated compute (epochs), and the driver's proposal and result-handling latency "
                    "and peak memory.")
    p.add_argument("--table", required=True, type=Path, metavar="CURVES.csv.gz", help="recorded curves (CSV, plain or .gz)")
    p.add_argument("--space", default=None,
                   help="space the table was recorded from (default: the shipped space the file is named after, "
                        "e.g. default_curves.csv.gz -> default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a space key, e.g. --set data.path=~/data/warandpeace.txt (repeatable)")
    p.add_argument("--trials", type=int, required=True, help="trials to launch in all")
    p.add_argument("--workers", type=int, required=True, help="simulated trials running at once")
    p.add_argument("--budget", type=float, default=None, help="stop launching after this many epochs of compute")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, help="ehvi (the default), or Optuna's tpe, nsga2, gp, random")
    p.add_argument("--pruner", default="pareto", help="pruner: pareto (default), median, percentile, hyperband, none, ...")
    p.add_argument("--pruner-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="pruner argument, e.g. --pruner-arg n_warmup_steps=1 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mapping", default="fresh", choices=MAPPINGS,
                   help="fresh (default): a sample trains the nearest recorded configuration not yet launched; "
                        "nearest: the nearest one even if launched before")
    p.add_argument("--proposal-time", default=None, metavar="D",
                   help="simulated epochs each proposal takes, prepared in the background as in a Ray search "
                        "(realistic: 0.001-0.1, a proposal's seconds over an epoch's); default: instantaneous")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=cmd_replay)


def table_space(table: Path, space: str | None) -> str:
    """``--space``, else the shipped space the table is named after (``<space>_curves.csv[.gz]``), else default."""
    if space is not None:
        return space
    stem = table.name.split(".")[0]
    guess = stem[: -len("_curves")] if stem.endswith("_curves") else stem
    return guess if guess in shipped_spaces() else "default"


def cmd_replay(args: argparse.Namespace) -> int:
    if args.trials < 1:
        raise ValueError(f"--trials must be at least 1, got {args.trials}")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    budget = math.inf if args.budget is None else args.budget
    if not budget > 0:
        raise ValueError(f"--budget must be a positive number of epochs, got {args.budget}")
    proposal_time = None if args.proposal_time is None else _proposal_time(args.proposal_time)
    table = CurveTable.from_csv(args.table)
    space = load_space(table_space(args.table, args.space), args.overrides or None)
    config = SearchConfig(space, experiment="replay", trials=args.trials, sampler=args.sampler, pruner=args.pruner,
                          pruner_options=_pruner_args(args.pruner_arg), seed=args.seed, track=False)
    out = run_replay(table, config, trials=args.trials, workers=args.workers, budget=budget, mapping=args.mapping,
                     proposal_time=proposal_time)
    out["table"] = str(args.table)
    if args.json:
        print(json.dumps(json_safe(out), indent=2))
    else:
        print(summary_text(out))
    return 0


def _proposal_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"--proposal-time must be a number of epochs >= 0, got {text!r}")
    return value


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def summary_text(out: dict) -> str:
    """The summary as the terminal shows it: the run, the front, the hypervolume by compute, the driver's cost."""
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(out["statuses"].items()))
    lines = [
        f"replay of {out['table']} on space {out['space']}: {out['sampler']} + {out['pruner']}, seed {out['seed']}, "
        f"{out['workers']} workers, {out['mapping']} mapping over {out['configurations']} recorded configurations",
        f"{out['trials']} trials ({statuses}), {out['compute_epochs']:g} epochs of simulated compute, "
        f"{out['wall_s']:.1f} s",
        "",
        f"front found ({len(out['front'])} trials; {out['true_front_found']} of the table's "
        f"{out['true_front_size']}-member true front trained to the end):",
    ]
    rows = [{"trial": f["trial"], "family": f["family"], "key_args": _key_args(f["sampled"]), "params": f["params"],
             "valid_ppl": f["valid_ppl"], "test_ppl": None} for f in out["front"]]
    lines.append(format_table(rows) if rows else "(no trial finished)")
    best = out["best_hypervolume"]
    lines += ["", f"hypervolume against simulated compute (best-known {best:.4f}, reference "
                  f"{out['reference'][0]:g} params, ppl {out['reference'][1]:g}):"]
    trace = out["hypervolume_trace"]
    total = trace[-1][0] if trace else 0.0
    for share in (0.1, 0.25, 0.5, 0.75, 1.0):
        hv = max((h for c, h in trace if c <= share * total), default=0.0)
        lines.append(f"  {share * total:10.0f} epochs ({share:4.0%}): {hv:.4f}" + (f"  ({hv / best:.1%})" if best else ""))
    reached = "; ".join(f"{key.split('_')[2][:-3]}% {_epochs(out[key])}" for key in out if key.startswith("compute_to_"))
    lines.append(f"  compute to the best-known share: {reached}")
    lines += ["", "driver cost:",
              f"  proposal latency ({out['proposals']} proposals): p50 {_s(out['proposal_latency_p50_s'])}, "
              f"p95 {_s(out['proposal_latency_p95_s'])}, max {_s(out['proposal_latency_max_s'])}",
              f"  result handling ({out['results']} reports and completions): p50 {_s(out['result_latency_p50_s'])}, "
              f"p95 {_s(out['result_latency_p95_s'])}, max {_s(out['result_latency_max_s'])}",
              *_during(out),
              f"  peak RSS {out['peak_rss_mb']:.0f} MiB"]
    return "\n".join(lines)


def _during(out: dict) -> list[str]:
    """With ``--proposal-time``: the proposals' simulated cost, and result handling while one was computed or not."""
    if out.get("proposal_time") is None:
        return []
    rows = [f"  proposals take {out['proposal_time']:g} simulated epochs each, prepared in the background"]
    for key, what in (("result_during_proposal", "while a proposal was computed"),
                      ("result_no_proposal", "while none was")):
        n = out["results_during_proposal"] if key == "result_during_proposal" else \
            out["results"] - out["results_during_proposal"]
        rows.append(f"    results handled {what} ({n}): p50 {_s(out[f'{key}_latency_p50_s'])}, "
                    f"p95 {_s(out[f'{key}_latency_p95_s'])}, max {_s(out[f'{key}_latency_max_s'])}")
    return rows


def _epochs(value: float | None) -> str:
    return "not reached" if value is None else f"at {value:g} epochs"


def _key_args(sampled: dict) -> dict:
    skip = ("model.cell", "model.dropout", "train.lr")
    return {k.split(".", 1)[-1]: v for k, v in sampled.items() if k not in skip}
