"""Search efficiency: hypervolume against simulated compute, per sampler/pruner, over seeds, by replaying recorded curves.

Each strategy is a replayed search (``squeezelstm.search.backends.replay_search``: the real
``SearchController`` with its Optuna sampler and pruning bridge, ``--workers`` simulated parallel
workers, the nearest recorded configuration's learning curve) run for ``--seeds`` seeds up to
``--budget`` epochs of compute. Hypervolume is in (log10 params, log perplexity) with the fixed
reference (budget max_params, the corpus's unigram perplexity; ``--ref-ppl vocab`` for the
vocabulary size ``squeezelstm search`` uses, against which one trial already scores ~90%); the
best-known hypervolume is that of the whole recorded table's front.

Printed table per strategy (median over seeds, with the interquartile range): compute to reach 90%,
95% and 99% of the best-known hypervolume (and how many seeds did), hypervolume fraction at 25/50/100%
of the budget, true front members found (all / smaller half by parameter count). Writes a JSON of
every trace and a plotly HTML figure.

    python benchmarks/search_efficiency.py --table benchmarks/data/default_curves.csv.gz --seeds 10 \
        --json /tmp/eff.json --html /tmp/eff.html
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# name -> (sampler, pruner, pruner kwargs, ASHA stopper kwargs or None)
STRATEGIES: dict[str, tuple[str, str, dict, dict | None]] = {
    "random": ("random", "none", {}, None),
    "nsga2": ("nsga2", "none", {}, None),
    "tpe": ("tpe", "none", {}, None),
    "tpe+asha(ray)": ("tpe", "none", {}, {"grace_period": 1, "reduction_factor": 4}),
    "tpe+median": ("tpe", "median", {}, None),
    "tpe+successive_halving": ("tpe", "successive_halving", {}, None),
    "tpe+pareto": ("tpe", "pareto", {"n_warmup_steps": 2}, None),  # the default until session 3
    "ehvi+pareto (default)": ("ehvi", "pareto", {}, None),  # what `squeezelstm search` uses (pareto warm-up 1)
}
# (sampler, pruner, pruner kwargs, Ray ASHA kwargs or None[, sampler kwargs])
EXTRA: dict[str, tuple] = {
    "random+pareto": ("random", "pareto", {"n_warmup_steps": 2}, None),
    "nsga2+pareto": ("nsga2", "pareto", {"n_warmup_steps": 2}, None),
    "tpe+pareto warmup1": ("tpe", "pareto", {"n_warmup_steps": 1}, None),
    "tpe+pareto margin0.3": ("tpe", "pareto", {"margin": 0.3, "n_warmup_steps": 2}, None),
    "random+asha(ray)": ("random", "none", {}, {"grace_period": 1, "reduction_factor": 4}),
    "tpe+asha(ray) rf2": ("tpe", "none", {}, {"grace_period": 1, "reduction_factor": 2}),
    "tpe+successive_halving rf2": ("tpe", "successive_halving", {"reduction_factor": 2}, None),
    "tpe+pareto warmup3": ("tpe", "pareto", {"n_warmup_steps": 3}, None),
    "gp+pareto": ("gp", "pareto", {"n_warmup_steps": 2}, None),
    "random+pareto warmup1": ("random", "pareto", {"n_warmup_steps": 1}, None),
    "nsga2+pareto warmup1": ("nsga2", "pareto", {"n_warmup_steps": 1}, None),
    "ehvi": ("ehvi", "none", {}, None),
    "ehvi+pareto warmup2": ("ehvi", "pareto", {"n_warmup_steps": 2}, None),
    "ehvi+median": ("ehvi", "median", {}, None),  # target 2 with the default's sampler: which pruner keeps the small end
    "ehvi+pareto margin0.3": ("ehvi", "pareto", {"margin": 0.3}, None),  # a wider keep band than the default's
    "ehvi(ard)+pareto": ("ehvi", "pareto", {}, None, {"kernel": "ard"}),  # one GP length per column
    "ehvi(no local)+pareto": ("ehvi", "pareto", {}, None, {"n_local": 0}),  # the default until session 5: pool only
    "ehvi(ard,no local)+pareto": ("ehvi", "pareto", {}, None, {"kernel": "ard", "n_local": 0}),
    "ehvi(unbounded)+pareto": ("ehvi", "pareto", {}, None, {"max_rows": None}),  # every epoch of every trial
    "ehvi(max_rows 64)+pareto": ("ehvi", "pareto", {}, None, {"max_rows": 64}),  # an active set that binds early
    "ehvi(max_rows 128)+pareto": ("ehvi", "pareto", {}, None, {"max_rows": 128}),
}


def _ray_asha(max_t: int, **kwargs):
    sys.path.insert(0, str(HERE))
    from replay import RayASHA  # benchmarks/replay.py: Ray's own scheduler, no cluster

    return RayASHA(max_t=max_t, **kwargs)


def run_strategy(name: str, spec: tuple, table, space, *, seeds: list[int], workers: int, budget: float,
                 epochs: int, vocab: int, ref: tuple[float, float], cost: str, fresh: bool = False,
                 proposal_time: float | None = None, free_startup: bool = False) -> list[dict]:
    """Replay strategy ``spec`` once per seed; returns one dict per seed (trace, trials, counts).

    ``proposal_time``: each proposal takes that much simulated compute, prepared in the background as in a
    Ray search (``replay_search``'s option); None: synchronous and instantaneous. ``free_startup``: ehvi's random
    start (its ``n_startup`` first closed trials, 8 by default) proposes in no simulated time.
    """
    from squeezelstm.search.backends import replay_search
    from squeezelstm.search.config import SearchConfig

    sampler, pruner, pruner_kwargs, asha, *rest = spec  # an optional fifth entry: the sampler's options
    sampler_kwargs = rest[0] if rest else None
    startup = int((sampler_kwargs or {}).get("n_startup", 8)) if free_startup and sampler == "ehvi" else 0
    out = []
    for seed in seeds:
        stopper = _ray_asha(epochs, **asha) if asha is not None else None
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = SearchConfig(space, sampler=sampler, pruner=pruner, seed=seed, epochs=epochs,
                                  sampler_options=sampler_kwargs or {}, pruner_options=pruner_kwargs)
            res = replay_search(table, config, workers=workers, budget=budget, cost=cost, stopper=stopper,
                                vocab_size=vocab, ref=ref, fresh=fresh, proposal_time=proposal_time,
                                startup_trials=startup)
        run = {"seed": seed, "trace": res.trace, "trials": res.trials, "counts": res.counts,
               "compute": res.compute, "wall_s": time.perf_counter() - start, "_result": res}
        if proposal_time is not None:
            run["trace_time"] = res.trace_time
            run["result_latency"] = {k: _quantiles(v) for k, v in res.latency.items()}
        out.append(run)
    return out


def _quantiles(seconds: list[float]) -> dict:
    arr = np.asarray(seconds, dtype=float)
    if not arr.size:
        return {"n": 0}
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max())}


def summarise(runs: list[dict], best: float, budget: float, front: list, small: list) -> dict:
    """Per-strategy numbers over seeds: compute to 90/95% of ``best``, hypervolume fractions at budgets, front found."""
    def q(values: list[float]) -> dict:
        arr = np.sort(np.array(values, dtype=float))
        with np.errstate(invalid="ignore"):  # a seed that never reached a target counts as infinite compute

            def pct(p: float) -> float:
                # nearest-rank percentile: no interpolation between a finite value and infinity
                return float(arr[min(len(arr) - 1, max(0, int(math.ceil(p / 100 * len(arr))) - 1))])

            return {"median": float(np.median(arr)) if np.isfinite(np.median(arr)) else pct(50),
                    "q25": pct(25), "q75": pct(75), "mean": float(arr.mean()), "sd": float(arr.std())}

    out: dict = {"seeds": len(runs)}
    for frac in (0.9, 0.95, 0.99):
        reached = [r["_result"].compute_to(frac * best) for r in runs]
        vals = [c if c is not None else math.inf for c in reached]
        out[f"to{int(frac * 100)}"] = q(vals)
        out[f"to{int(frac * 100)}_reached"] = sum(c is not None for c in reached)
        if "trace_time" in runs[0]:  # simulated time (epochs of one worker) to the share, proposals included
            times = [r["_result"].time_to(frac * best) for r in runs]
            out[f"time{int(frac * 100)}"] = q([t if t is not None else math.inf for t in times])
    for share in (0.25, 0.5, 1.0):
        out[f"hv@{share}"] = q([r["_result"].hypervolume_at(share * budget) / best for r in runs])
    out["found"] = q([r["_result"].found(front) for r in runs])
    out["found_small"] = q([r["_result"].found(small) for r in runs])
    out["trials"] = q([len(r["trials"]) for r in runs])
    out["pruned"] = q([sum(t["status"] == "pruned" for t in r["trials"]) for r in runs])
    return out


def _fmt(s: dict, digits: int = 0) -> str:
    med, lo, hi = s["median"], s["q25"], s["q75"]
    if math.isinf(med):
        return "never"
    f = f"{{:.{digits}f}}"
    hi_txt = "inf" if math.isinf(hi) else f.format(hi)
    return f"{f.format(med)} [{f.format(lo)}-{hi_txt}]"


def table_markdown(summary: dict[str, dict], n_front: int, n_small: int) -> str:
    """The comparison as a markdown table (medians with interquartile ranges over seeds)."""
    lines = [
        "| strategy | compute to 90% HV | seeds | compute to 95% HV | seeds | compute to 99% HV | seeds | HV@25% | HV@50% "
        f"| HV@100% | front found (of {n_front}) | small half found (of {n_small}) | trials | pruned |",
        "|---" * 14 + "|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {_fmt(s['to90'])} | {s['to90_reached']}/{s['seeds']} | {_fmt(s['to95'])} | "
            f"{s['to95_reached']}/{s['seeds']} | {_fmt(s['to99'])} | {s['to99_reached']}/{s['seeds']} | {_fmt(s['hv@0.25'], 3)} | {_fmt(s['hv@0.5'], 3)} | "
            f"{_fmt(s['hv@1.0'], 3)} | {_fmt(s['found'], 1)} | {_fmt(s['found_small'], 1)} | "
            f"{_fmt(s['trials'])} | {_fmt(s['pruned'])} |"
        )
    return "\n".join(lines)


def figure(all_runs: dict[str, list[dict]], best: float, budget: float, path: Path) -> None:
    """Plotly HTML: median hypervolume fraction against compute per strategy, with the interquartile band."""
    import plotly.graph_objects as go

    grid = np.linspace(0, budget, 200)
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#393b79", "#637939"]
    for i, (name, runs) in enumerate(all_runs.items()):
        ys = np.array([[r["_result"].hypervolume_at(x) / best for x in grid] for r in runs])
        color = palette[i % len(palette)]
        lo, med, hi = np.percentile(ys, 25, axis=0), np.median(ys, axis=0), np.percentile(ys, 75, axis=0)
        fig.add_trace(go.Scatter(x=np.concatenate([grid, grid[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                                 fill="toself", line={"width": 0}, fillcolor=color, opacity=0.15,
                                 showlegend=False, hoverinfo="skip", legendgroup=name))
        fig.add_trace(go.Scatter(x=grid, y=med, name=name, line={"color": color}, legendgroup=name))
    for frac in (0.9, 0.95, 0.99):
        fig.add_hline(y=frac, line_dash="dot", line_color="grey", annotation_text=f"{int(frac * 100)}%")
    fig.update_layout(title="Replayed search efficiency: hypervolume / best-known vs simulated compute (median, IQR over seeds)",
                      xaxis_title="simulated compute (epochs trained)", yaxis_title="hypervolume / best-known",
                      template="plotly_white")
    fig.write_html(str(path), include_plotlyjs=True)


def reference_point(space, ref_ppl: str = "unigram") -> tuple[float, float]:
    """The fixed hypervolume reference: the budget's ``max_params`` and either the corpus's unigram
    perplexity or its vocabulary size (what ``squeezelstm search`` reports)."""
    if ref_ppl == "vocab":
        from squeezelstm.search.controller import corpus_vocab_size

        return float(space.max_params), float(corpus_vocab_size(space))
    from squeezelstm.trainers import Config, load_corpus

    corpus = load_corpus(Config.from_dict({"data": dict(space.fixed["data"])}).data)
    return float(space.max_params), float(corpus.unigram_ppl)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=str(HERE / "data" / "default_curves.csv.gz"))
    parser.add_argument("--space", default="default")
    parser.add_argument("--data", default=None, help="data.path for a text space")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the space's)")
    parser.add_argument("--budget", type=float, default=None,
                        help="compute per search in epochs (default: epochs x number of recorded configurations)")
    parser.add_argument("--cost", default="epochs", choices=("epochs", "seconds"))
    parser.add_argument("--strategies", nargs="*", default=None,
                        help=f"names from {list(STRATEGIES) + list(EXTRA)} (default: the issue's seven)")
    parser.add_argument("--extra", action="store_true", help="also the tuning variants")
    parser.add_argument("--ref-ppl", default="unigram", choices=("unigram", "vocab"),
                        help="reference perplexity: the corpus's unigram perplexity (default) or the vocabulary size "
                             "(what `squeezelstm search` reports; every trained model is so far below it that one "
                             "trial already gives ~90%% of the best hypervolume)")
    parser.add_argument("--fresh", action="store_true",
                        help="map samples to the nearest recorded configuration not yet launched in that search")
    parser.add_argument("--proposal-time", type=float, nargs="+", default=None, metavar="D",
                        help="simulated compute (epochs) each proposal takes, prepared in the background as in a Ray "
                             "search; several values replay each strategy once per value (default: synchronous, 0)")
    parser.add_argument("--free-startup", action="store_true",
                        help="with --proposal-time: ehvi's random start (before n_startup trials closed) takes no time")
    parser.add_argument("--json", default=None)
    parser.add_argument("--html", default=None)
    args = parser.parse_args(argv)

    from squeezelstm.search.controller import corpus_vocab_size
    from squeezelstm.search.backends import CurveTable
    from squeezelstm.search.space import load_space

    space = load_space(args.space, [f"data.path={args.data}"] if args.data else None)
    table = CurveTable.from_csv(args.table)
    epochs = space.trial_epochs(args.epochs)
    vocab = corpus_vocab_size(space)
    ref = reference_point(space, args.ref_ppl)
    best = table.best_hypervolume(epochs, ref)
    front = table.true_front(epochs)
    small = front[: math.ceil(len(front) / 2)]
    n_complete = len(table.points(epochs))
    budget = float(args.budget or epochs * n_complete)
    catalogue = {**STRATEGIES, **EXTRA}
    names = args.strategies or (list(STRATEGIES) + (list(EXTRA) if args.extra else []))
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {list(catalogue)}")
    seeds = list(range(args.seeds))
    if args.proposal_time is not None and any(not (math.isfinite(d) and d >= 0) for d in args.proposal_time):
        raise ValueError(f"--proposal-time must be numbers >= 0, got {args.proposal_time}")
    times: list[float | None] = args.proposal_time or [None]
    runs_of = [(name if d is None else f"{name} d={d:g}", name, d) for name in names for d in times]
    print(f"table: {len(table.curves)} configurations ({n_complete} reached epoch {epochs}), front {len(front)}, "
          f"best-known HV {best:.4f} (reference {ref[0]:g} params, ppl {ref[1]:.1f}); budget {budget:g} {args.cost}, {args.workers} workers, {len(seeds)} seeds"
          f"{', fresh mapping' if args.fresh else ''}",
          flush=True)
    all_runs: dict[str, list[dict]] = {}
    summary: dict[str, dict] = {}
    for key, name, d in runs_of:
        start = time.perf_counter()
        runs = run_strategy(name, catalogue[name], table, space, seeds=seeds, workers=args.workers, budget=budget,
                            epochs=epochs, vocab=vocab, ref=ref, cost=args.cost, fresh=args.fresh, proposal_time=d,
                            free_startup=args.free_startup)
        all_runs[key] = runs
        summary[key] = summarise(runs, best, budget, front, small)
        print(f"  {key}: {time.perf_counter() - start:.0f}s", flush=True)
    print(table_markdown(summary, len(front), len(small)))
    if args.proposal_time is not None:
        print("simulated time to the share (epochs of one worker; proposals included):")
        for key, s in summary.items():
            print(f"  {key}: 90% {_fmt(s['time90'], 1)}, 95% {_fmt(s['time95'], 1)}, 99% {_fmt(s['time99'], 1)}")
    base = summary.get("ehvi+pareto (default)")
    if base is not None:
        for other in ("random", "nsga2"):
            if other in summary:
                a, b = base["to95"]["median"], summary[other]["to95"]["median"]
                ratio = a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else float("nan")
                print(f"default / {other} median compute to 95%: {ratio:.2f}")
    if args.json:
        payload = {"ref": list(ref), "table": str(args.table), "configurations": len(table.curves), "complete": n_complete,
                   "front": [c.index for c in front], "best_hv": best, "budget": budget, "epochs": epochs,
                   "workers": args.workers, "seeds": seeds, "fresh": args.fresh, "proposal_time": args.proposal_time,
                   "free_startup": args.free_startup,
                   "summary": summary,
                   "runs": {n: [{k: v for k, v in r.items() if k != "_result"} for r in rs] for n, rs in all_runs.items()}}
        Path(args.json).write_text(json.dumps(payload, default=lambda o: None if isinstance(o, float) else str(o)))
    if args.html:
        figure(all_runs, best, budget, Path(args.html))
    return 0


if __name__ == "__main__":
    sys.exit(main())
